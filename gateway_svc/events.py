"""Server events of the Realtime API (GA shapes), as plain dicts ready for JSON.

One builder per event the gateway sends. Shapes follow the openai-python SDK's
types (``openai.types.realtime``); every event gets its own ``event_id``.
Pure module: no I/O.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any

Event = dict[str, Any]

_PREFIX = uuid.uuid4().hex[:10]
_counter = itertools.count(1)


def new_event_id() -> str:
    return f"event_{_PREFIX}{next(_counter):x}"


def new_id(kind: str) -> str:
    """A fresh id like the API's (``item_...``, ``resp_...``, ``sess_...``)."""
    return f"{kind}_{uuid.uuid4().hex[:20]}"


def event(type_: str, **fields: Any) -> Event:
    return {"type": type_, "event_id": new_event_id(), **fields}


def error(message: str, *, type_: str = "invalid_request_error", code: str | None = None,
          param: str | None = None, client_event_id: str | None = None) -> Event:
    """The GA ``error`` event: ``error{type, code, message, param, event_id}``."""
    return event("error", error={"type": type_, "code": code, "message": message, "param": param,
                                 "event_id": client_event_id})


# --- items ------------------------------------------------------------------------------


def user_text_item(item_id: str, text: str) -> Event:
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": "user",
            "status": "completed", "content": [{"type": "input_text", "text": text}]}


def user_audio_item(item_id: str, transcript: str | None = None) -> Event:
    """A committed audio turn; its audio is not echoed back (as the API omits it)."""
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": "user",
            "status": "completed", "content": [{"type": "input_audio", "transcript": transcript}]}


def assistant_item(item_id: str, audio: bool, text: str | None, status: str) -> Event:
    part: Event = ({"type": "output_audio", "transcript": text} if audio else {"type": "output_text", "text": text})
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": "assistant",
            "status": status, "content": [part] if text is not None else []}


# --- responses ----------------------------------------------------------------------------


def response_object(response_id: str, conversation_id: str, status: str, modalities: list[str],
                    output: list[Event], usage: Event | None = None,
                    status_details: Event | None = None) -> Event:
    return {"id": response_id, "object": "realtime.response", "status": status,
            "status_details": status_details, "conversation_id": conversation_id,
            "output_modalities": modalities, "output": output,
            "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}}},
            "max_output_tokens": "inf", "metadata": None, "usage": usage}


def usage_object(usage: dict[str, Any]) -> Event:
    input_tokens = int(usage.get("input_tokens", 0) or 0)
    output_tokens = int(usage.get("output_tokens", 0) or 0)
    total = int(usage.get("total_tokens", 0) or 0) or input_tokens + output_tokens
    return {"total_tokens": total, "input_tokens": input_tokens, "output_tokens": output_tokens,
            "input_token_details": {"text_tokens": input_tokens, "audio_tokens": 0, "cached_tokens": 0},
            "output_token_details": {"text_tokens": output_tokens, "audio_tokens": 0}}
