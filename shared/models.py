"""Stream entry models: one pydantic model per entry `type`, parsed through one
discriminated union.

Every entry on every stream is stored as a single field ``d`` holding the JSON
of one of these models. Each carries ``v`` (schema version) and ``type``.
Anything that does not parse (bad JSON, unknown type, a limit exceeded) raises
:class:`EntryError` with a readable reason; the caller dead-letters it.

Pure module: no I/O, no asyncio, no redis.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from pydantic_core import to_json

SCHEMA_VERSION = 1

#: Longest text accepted in any utterance, transcript or response (characters).
MAX_TEXT_CHARS = 8_000
#: Largest decoded audio chunk: 2 s of PCM16 mono at 24 kHz.
MAX_AUDIO_CHUNK_BYTES = 96_000
#: Largest payload (``d`` field) of a valid entry written compactly, as ``encode``
#: writes it: the base64 of the largest audio chunk, with 4 KiB for its other fields
#: (measured: 128,232 bytes with 64-character ids). Reads are sized with it.
MAX_ENTRY_BYTES = (MAX_AUDIO_CHUNK_BYTES * 4) // 3 + 4 + 4096
#: Wire audio format, fixed by the Realtime API's `audio/pcm` input.
AUDIO_SAMPLE_RATE_HZ = 24_000
AUDIO_SAMPLE_WIDTH_BYTES = 2
#: Bytes of one millisecond of wire audio (48).
AUDIO_BYTES_PER_MS = AUDIO_SAMPLE_RATE_HZ * AUDIO_SAMPLE_WIDTH_BYTES // 1000

ENTRY_FIELD = b"d"

# No ':' in ids: they become parts of key names, split on ':'.
IDENT_PATTERN = r"^[A-Za-z0-9_.-]+$"
Ident = Annotated[str, Field(min_length=1, max_length=64, pattern=IDENT_PATTERN)]
_IDENT_RE = re.compile(IDENT_PATTERN)


def is_ident(value: object, max_length: int = 64) -> bool:
    """Would ``value`` pass as an ``Ident`` (an id field of an entry) of at most ``max_length``?"""
    return isinstance(value, str) and 0 < len(value) <= max_length and _IDENT_RE.match(value) is not None
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]


class EntryError(ValueError):
    """An entry that cannot be accepted; ``reason`` is what goes to the dead-letter stream."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1  # SCHEMA_VERSION
    conversation_id: Ident


# --- control stream -------------------------------------------------------


class ConversationStarted(_Entry):
    type: Literal["conversation.started"] = "conversation.started"
    #: "text" or "audio": informs nothing on the server side, kept for operators.
    mode: Literal["text", "audio"] = "text"
    instructions: Text | None = None


class ConversationEnded(_Entry):
    type: Literal["conversation.ended"] = "conversation.ended"
    reason: Annotated[str, Field(max_length=200)] = "client"


# --- input stream (client -> transcription owner) -------------------------


class UtteranceText(_Entry):
    """A simulated utterance: the text stands for what was said (the seed's direct simulation)."""

    type: Literal["utterance.text"] = "utterance.text"
    utterance_id: Ident
    text: Text
    #: Client wall clock when the utterance ended (ms since epoch).
    sent_ms: int
    #: Answer this turn on its own (false: the text joins the conversation and an answer
    #: waits for a ``response.request``: the Realtime API's "send, then response.create").
    respond: bool = True


class AudioChunk(_Entry):
    type: Literal["audio.chunk"] = "audio.chunk"
    utterance_id: Ident | None = None
    seq: int = Field(ge=0)
    #: Base64 of PCM16 little-endian mono 24 kHz samples.
    audio: str

    @field_validator("audio")
    @classmethod
    def _check_audio(cls, value: str) -> str:
        if len(value) > (MAX_AUDIO_CHUNK_BYTES * 4) // 3 + 4:
            raise ValueError(f"audio chunk over {MAX_AUDIO_CHUNK_BYTES} bytes")
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"audio is not valid base64: {exc}") from None
        if len(raw) > MAX_AUDIO_CHUNK_BYTES:
            raise ValueError(f"audio chunk over {MAX_AUDIO_CHUNK_BYTES} bytes")
        problem = pcm16_problem(raw)
        if problem is not None:
            raise ValueError(problem)
        return value

    def pcm(self) -> bytes:
        return base64.b64decode(self.audio)


def pcm16_problem(raw: bytes) -> str | None:
    """Why ``raw`` is not raw PCM16 samples as the wire carries them (None: it may be):
    a half sample, or a file container's header at its start."""
    if len(raw) % AUDIO_SAMPLE_WIDTH_BYTES:
        return "audio length is not a whole number of PCM16 samples"
    if raw[:4] in (b"RIFF", b"RIFX", b"OggS", b"fLaC", b"ID3\x03", b"ID3\x04"):
        return "audio is a file container (WAV/Ogg/FLAC/MP3), not raw PCM16 24 kHz mono samples"
    return None


class AudioEnd(_Entry):
    type: Literal["audio.end"] = "audio.end"
    utterance_id: Ident | None = None
    #: Client wall clock at the end of speech (ms since epoch).
    sent_ms: int
    #: What the client meant to say, when it knows (the simulator does): for WER.
    reference_text: Text | None = None
    #: As :attr:`UtteranceText.respond`: false waits for a ``response.request``.
    respond: bool = True


class ResponseRequest(_Entry):
    """Answer now, from the conversation so far (the Realtime API's ``response.create``).

    Written to the input stream behind the turns it answers; the transcription owner
    relays it, in order, to the transcripts stream, where the conversation owner answers
    every user turn since the last answer. Its ``request_id`` is the answer's
    ``utterance_id``, so a replayed request is not answered twice.
    """

    type: Literal["response.request"] = "response.request"
    request_id: Ident
    #: Client wall clock when the answer was asked for (ms since epoch).
    sent_ms: int


class ResponseCancel(_Entry):
    """Stop the answer to ``target_id`` (the Realtime API's ``response.cancel``, or the
    user speaking over it). Relayed in order like ``response.request``, so it always
    follows its target: the conversation owner stops the engine when the answer is
    under way, answers a target not yet started with a cancelled done, and does
    nothing when the answer is already done."""

    type: Literal["response.cancel"] = "response.cancel"
    #: The ``utterance_id`` of the answer to stop (an item id, or a request id).
    target_id: Ident
    sent_ms: int


class ResponseTruncate(_Entry):
    """Only ``text`` of the answer to ``target_id`` was heard (the Realtime API's
    ``conversation.item.truncate``): the history keeps that, also after a takeover."""

    type: Literal["response.truncate"] = "response.truncate"
    target_id: Ident
    text: Text


# --- transcripts stream (transcription owner -> conversation owner) -------


class TranscriptDelta(_Entry):
    type: Literal["transcript.delta"] = "transcript.delta"
    utterance_id: Ident
    text: Text


class TranscriptFinal(_Entry):
    type: Literal["transcript.final"] = "transcript.final"
    utterance_id: Ident
    text: Text
    #: When the utterance ended at the client (copied from its input entry).
    sent_ms: int
    #: When the transcriber produced the final (ms since epoch).
    final_ms: int
    #: Copied from the utterance: false means no answer until a ``response.request``.
    respond: bool = True


class TranscriptFailed(_Entry):
    """An utterance that gave no transcript: no speech or no words in it (``no_speech``),
    or the recogniser failed or refused it (its input went to the dead letters). The
    client hears of it; no answer follows."""

    type: Literal["transcript.failed"] = "transcript.failed"
    utterance_id: Ident
    code: Annotated[str, Field(max_length=100)]
    reason: Annotated[str, Field(max_length=2000)]


# --- responses stream (conversation owner -> clients) ---------------------


class ResponseStarted(_Entry):
    type: Literal["response.started"] = "response.started"
    utterance_id: Ident
    response_id: Ident


class ResponseDelta(_Entry):
    type: Literal["response.delta"] = "response.delta"
    utterance_id: Ident
    response_id: Ident
    #: Position of this delta in its response: lets a client drop a repeat.
    index: int = Field(ge=0)
    delta: Text


class Usage(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


class Timings(BaseModel):
    """Wall-clock milestones of one utterance (ms since epoch)."""

    model_config = ConfigDict(frozen=True)

    sent_ms: int
    transcript_final_ms: int
    first_delta_ms: int | None = None
    done_ms: int


class ResponseDone(_Entry):
    type: Literal["response.done"] = "response.done"
    utterance_id: Ident
    response_id: Ident
    text: Text
    usage: Usage = Usage()
    timings: Timings
    #: The user text answered, when it is not one final transcript's (an answer to a
    #: ``response.request`` joins every user turn since the previous answer): the
    #: history rebuilt after a takeover takes the turn from here.
    prompt: Text | None = None
    #: ``cancelled``: stopped by a ``response.cancel``; ``text`` is what was produced by then.
    status: Literal["completed", "cancelled"] = "completed"


class ResponseFailed(_Entry):
    type: Literal["response.failed"] = "response.failed"
    utterance_id: Ident
    response_id: Ident
    code: Annotated[str, Field(max_length=100)]
    reason: Annotated[str, Field(max_length=2000)]


Entry = Annotated[
    ConversationStarted
    | ConversationEnded
    | UtteranceText
    | AudioChunk
    | AudioEnd
    | ResponseRequest
    | ResponseCancel
    | ResponseTruncate
    | TranscriptDelta
    | TranscriptFinal
    | TranscriptFailed
    | ResponseStarted
    | ResponseDelta
    | ResponseDone
    | ResponseFailed,
    Field(discriminator="type"),
]

ControlEntry = ConversationStarted | ConversationEnded
#: Input entries the transcription owner relays, in order, to the transcripts stream.
RelayedEntry = ResponseRequest | ResponseCancel | ResponseTruncate
InputEntry = UtteranceText | AudioChunk | AudioEnd | RelayedEntry
TranscriptEntry = TranscriptDelta | TranscriptFinal | TranscriptFailed | RelayedEntry
ResponseEntry = ResponseStarted | ResponseDelta | ResponseDone | ResponseFailed

_ENTRY_ADAPTER: TypeAdapter[Entry] = TypeAdapter(Entry)


def encode(entry: BaseModel) -> bytes:
    return entry.model_dump_json(exclude_none=True).encode()


# Hot-path encoders: a worker's own output entries, built from parts that were
# validated when they came in (ids) or are bounded here (text). They skip the
# model's validation pass; tests check that they decode to the same models.


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch: the unit of every timing an entry carries."""
    return int(time.time() * 1000)


def encode_transcript_final(
    conversation_id: str, utterance_id: str, text: str, sent_ms: int, final_ms: int, respond: bool = True
) -> bytes:
    entry = {"v": SCHEMA_VERSION, "conversation_id": conversation_id, "type": "transcript.final",
             "utterance_id": utterance_id, "text": text[:MAX_TEXT_CHARS], "sent_ms": sent_ms,
             "final_ms": final_ms}
    if not respond:
        entry["respond"] = False
    return to_json(entry)


def encode_response_started(conversation_id: str, utterance_id: str, response_id: str) -> bytes:
    return to_json({"v": SCHEMA_VERSION, "conversation_id": conversation_id, "type": "response.started",
                    "utterance_id": utterance_id, "response_id": response_id})


def encode_response_delta(conversation_id: str, utterance_id: str, response_id: str, index: int, delta: str) -> bytes:
    return to_json({"v": SCHEMA_VERSION, "conversation_id": conversation_id, "type": "response.delta",
                    "utterance_id": utterance_id, "response_id": response_id, "index": index,
                    "delta": delta[:MAX_TEXT_CHARS]})


def encode_response_done(
    conversation_id: str, utterance_id: str, response_id: str, text: str, usage: dict[str, int],
    sent_ms: int, transcript_final_ms: int, first_delta_ms: int | None, done_ms: int,
    prompt: str | None = None, cancelled: bool = False,
) -> bytes:
    """A ``response.done`` entry (the :class:`Timings` fields as plain ints: no model per answer)."""
    timings = {"sent_ms": sent_ms, "transcript_final_ms": transcript_final_ms, "done_ms": done_ms}
    if first_delta_ms is not None:
        timings["first_delta_ms"] = first_delta_ms
    entry = {"v": SCHEMA_VERSION, "conversation_id": conversation_id, "type": "response.done",
             "utterance_id": utterance_id, "response_id": response_id, "text": text[:MAX_TEXT_CHARS],
             "usage": {k: v for k, v in usage.items() if isinstance(v, int)}, "timings": timings}
    if prompt is not None:
        entry["prompt"] = prompt[:MAX_TEXT_CHARS]
    if cancelled:
        entry["status"] = "cancelled"
    return to_json(entry)


def decode(raw: bytes | str) -> Entry:
    """Parse one entry's JSON; raise :class:`EntryError` with a short reason."""
    try:
        return _ENTRY_ADAPTER.validate_json(raw)
    except ValidationError as exc:
        raise EntryError(_summarise(exc)) from None


def decode_fields(fields: dict[bytes, bytes]) -> Entry:
    """Parse a raw stream entry (its field map) into a model."""
    raw = fields.get(ENTRY_FIELD)
    if raw is None:
        raise EntryError(f"entry has no {ENTRY_FIELD.decode()!r} field")
    return decode(raw)


def _summarise(exc: ValidationError) -> str:
    parts: list[str] = []
    for err in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "entry"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - len(parts)
    if more > 0:
        parts.append(f"(+{more} more)")
    return "; ".join(parts)


def expect(entry: Entry, *kinds: type[Any]) -> None:
    """Raise EntryError when an entry is of a type this stream does not carry."""
    if not isinstance(entry, kinds):
        names = ", ".join(k.model_fields["type"].default for k in kinds)
        raise EntryError(f"type {entry.type!r} does not belong on this stream (expected {names})")


class DeadLetter(BaseModel):
    """What the dead-letter stream holds: the original entry and why it is there."""

    model_config = ConfigDict(frozen=True)

    stream: str
    entry_id: str
    group: str
    worker_id: str
    reason: Annotated[str, Field(max_length=4000)]
    deliveries: int
    #: The original entry's ``d`` field, as text (undecodable bytes replaced): only its
    #: first bytes when ``raw_truncated`` (a 96 KB audio chunk makes no 96 KB letter).
    raw: str
    dead_ms: int
    #: ``raw`` holds only the start of the entry; the whole entry may still be on its stream.
    raw_truncated: bool = False
    #: The original entry's size in bytes (None in letters written before it was recorded).
    raw_bytes: int | None = None


DEAD_LETTER_ADAPTER: TypeAdapter[DeadLetter] = TypeAdapter(DeadLetter)
