"""A fake OpenAI Realtime (GA) server over real WebSockets, for tests.

Faithful to the GA wire format where the engines depend on it:

- ``Authorization: Bearer <key>`` is required (HTTP 401 otherwise);
- the beta header ``OpenAI-Beta: realtime=v1`` gets ``beta_api_shape_disabled`` then close 4000;
- ``?model=...`` opens a conversation session, ``?intent=transcription`` (no
  model) a transcription session; the wrong ``session.type`` for the URL is rejected;
- beta-shaped fields are rejected with the real error shape
  (``session.modalities``, ``response.modalities``, ``session.temperature``,
  a missing ``session.type``, assistant content ``text`` instead of ``output_text``);
- a commit of an empty or < 100 ms buffer fails (``input_audio_buffer_commit_empty``);
- a second ``response.create`` while one is active fails
  (``conversation_already_has_active_response``);
- ``response.cancel`` ends the active response with ``response.done`` status
  ``cancelled`` (the output so far, which stays in the conversation) and stops
  its deltas; with none active, or naming another ``response_id``, it is an
  ``error`` ``response_cancel_not_active``;
- unknown-to-the-client events are sent too (``response.output_item.added`` ...).

Deterministic answers: a conversation answers
``echo: "<last user text>" (items <n>)`` where n counts the user and assistant
messages in ITS conversation at that point (so a test sees replayed history
reach a new session), as several ``response.output_text.delta`` then
``response.done`` with usage. A transcription session transcribes audio made
by :func:`speech_pcm` back to its text (other audio: ``"<ms> ms of audio"``).

Knobs (:class:`Faults`): out-of-order transcription completions, expire a
session after N responses / commits (``session_expired`` then close 1001),
drop a connection (abrupt 1006 or 1011), rate limits, 3000 invalid_api_key,
responses that stall after their first delta, cancels left unanswered.

Run in-process (``async with FakeRealtimeServer(...)``), in a thread
(:class:`ThreadedFakeServer`), or as ``python -m tests.fake_realtime --port N``.

This module is the server (the handshake: key, route, query; one
:class:`~tests.fake_realtime_session.FakeSession` per connection); the
refusals are in :mod:`tests.fake_realtime_checks`, a response in
:mod:`tests.fake_realtime_response`, the knobs, the "speech" and the answers
in :mod:`tests.fake_realtime_script`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import threading
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.fake_realtime_script import Faults, SessionRecord
from tests.fake_realtime_session import FakeSession

# The fake's own websockets log would print the test key from the request
# headers; only the client side's logging is under test.
_SERVER_LOG = logging.getLogger("tests.fake_realtime.server")
_SERVER_LOG.setLevel(logging.WARNING)


class FakeRealtimeServer:
    def __init__(self, api_key: str | None = "sk-fake-test-key-0123456789", faults: Faults | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.api_key = api_key
        self.faults = faults or Faults()
        self.host = host
        self.port = port
        self.sessions: list[SessionRecord] = []
        self.rejected_handshakes: list[int] = []
        self._server: Server | None = None
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/realtime"

    async def start(self) -> FakeRealtimeServer:
        self._server = await serve(self._handle, self.host, self.port, process_request=self._check_request,
                                   max_size=16 * 1024 * 1024, logger=_SERVER_LOG)
        self.port = self._server.sockets[0].getsockname()[1] if not self.port else self.port
        return self

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FakeRealtimeServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def next_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):04d}{uuid.uuid4().hex[:6]}"

    def kind_sessions(self, kind: str) -> list[SessionRecord]:
        return [s for s in self.sessions if s.kind == kind]

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        if parts.path != "/v1/realtime":
            self.rejected_handshakes.append(404)
            return _http(404, {"error": {"type": "invalid_request_error", "code": "not_found",
                                         "message": f"no route {parts.path}"}})
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.rejected_handshakes.append(401)
            return _http(401, {"error": {"type": "invalid_request_error", "code": "invalid_api_key",
                                         "message": "Incorrect API key provided."}})
        query = parse_qs(parts.query)
        if "model" not in query and query.get("intent") != ["transcription"]:
            self.rejected_handshakes.append(400)
            return _http(400, {"error": {"type": "invalid_request_error", "code": "missing_required_parameter",
                                         "message": "Missing required parameter: 'model'."}})
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        parts = urlsplit(ws.request.path)
        query = parse_qs(parts.query)
        # A model in the URL makes a conversation session, whatever the intent.
        kind = "realtime" if "model" in query else "transcription"
        record = SessionRecord(kind, parts.path, query, dict(ws.request.headers.raw_items()))
        self.sessions.append(record)
        session = FakeSession(ws, record, self.faults, self.next_id)
        try:
            await session.run()
        except ConnectionClosed:
            pass
        finally:
            await session.stop()


def _http(status: int, body: dict[str, Any]) -> Response:
    data = json.dumps(body).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    reason = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}.get(status, "Error")
    return Response(status, reason, headers, data)


class ThreadedFakeServer:
    """Runs a :class:`FakeRealtimeServer` on its own event loop in a thread
    (for tests that block, e.g. on a subprocess). Use as a context manager."""

    def __init__(self, server: FakeRealtimeServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fake-realtime", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.server.start())
        except BaseException as exc:  # surfaced in __enter__
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self.server.aclose())
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    def __enter__(self) -> FakeRealtimeServer:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self.server

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(15)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_realtime", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default="sk-fake-test-key-0123456789")
    parser.add_argument("--expire-after-responses", type=int)
    parser.add_argument("--drop-after-responses", type=int)
    parser.add_argument("--expire-after-commits", type=int)
    parser.add_argument("--drop-after-commits", type=int)
    parser.add_argument("--rate-limit-responses", type=int, default=0)
    args = parser.parse_args(argv)
    faults = Faults(expire_after_responses=args.expire_after_responses, drop_after_responses=args.drop_after_responses,
                    expire_after_commits=args.expire_after_commits, drop_after_commits=args.drop_after_commits,
                    rate_limit_responses=args.rate_limit_responses)

    async def serve_forever() -> None:
        async with FakeRealtimeServer(args.api_key, faults, port=args.port) as server:
            print(server.url, flush=True)
            await asyncio.Future()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever())


if __name__ == "__main__":
    main()
