"""The I/O edge of the Realtime client: one WebSocket, client events out,
parsed server events in. Everything about sockets and third-party
exceptions stays in this module; callers see :class:`EngineError` subclasses.

Exceptions (third-party errors translated here, ``raise ... from exc``)::

    EngineError                      (shared.engines.base)
    └── RealtimeError
        ├── RealtimeAuthError        the key was refused: HTTP 401/403 at the
        │                            handshake or a 3000 / invalid_api_key close.
        │                            code="invalid_api_key", never retryable.
        └── RealtimeClosed           the handshake failed or the socket closed;
                                     ``decision`` (see classify_close) says
                                     whether to reconnect, start a new session
                                     at once, or give up.

The API key goes only into the ``Authorization`` header; it is registered
with :func:`shared.logs.register_secret` and scrubbed from the websockets
library's own log lines (its debug log prints request headers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from shared import metrics
from shared.engines.base import EngineError, EngineUnavailable
from shared.logs import register_secret, scrub
from shared.realtime.client_events import ClientEvent, to_wire
from shared.realtime.retry_policy import CloseDecision, classify_close, classify_handshake
from shared.realtime.server_events import ErrorEvent, ServerEvent, parse_server_event
from shared.settings import OpenAISettings

log = logging.getLogger(__name__)

#: Incoming frames can be large (session objects, long transcripts); outgoing
#: appends are bounded by the entry models (96 kB of PCM per chunk).
MAX_FRAME_BYTES = 16 * 1024 * 1024


class RealtimeError(EngineError):
    """A Realtime API failure (see the module docstring for the tree)."""


class RealtimeAuthError(RealtimeError):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="invalid_api_key", retryable=False)


class RealtimeClosed(RealtimeError):
    """The connection is gone (or never opened). ``close_code`` is the
    WebSocket close code (None for a refused handshake or a network error)."""

    def __init__(self, message: str, decision: CloseDecision, close_code: int | None = None,
                 reason: str = "", error_code: str | None = None) -> None:
        code = error_code or ("session_expired" if decision == "new_session" else "upstream_unavailable")
        super().__init__(message, code=code, retryable=decision != "fatal")
        self.decision: CloseDecision = decision
        self.close_code = close_code
        self.reason = reason


class _ScrubSecrets(logging.Filter):
    """Rewrites a record with registered secrets masked (before any handler sees it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


_WIRE_LOG = logging.getLogger("shared.realtime.wire")
_WIRE_LOG.addFilter(_ScrubSecrets())


def realtime_url(base_url: str, *, model: str | None = None, intent: str | None = None) -> str:
    """``base_url`` with ``model=`` (conversation sessions) or ``intent=`` (e.g.
    ``transcription``, with NO model: a model URL opens a conversation session).
    Other query parameters of the base URL are kept (Azure's ``api-version``)."""
    parts = urlsplit(base_url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ("model", "intent")]
    if model:
        query.append(("model", model))
    if intent:
        query.append(("intent", intent))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


@dataclass(frozen=True)
class RealtimeEndpoint:
    """Where and how to connect. ``api_key`` never prints (repr=False) and is
    registered as a secret for the log scrubber."""

    api_key: str = field(repr=False)
    base_url: str
    #: Handshake bound, and the bound of every wait for the server (responses, transcripts).
    timeout_s: float
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 20.0

    def __post_init__(self) -> None:
        register_secret(self.api_key)

    @classmethod
    def from_settings(cls, settings: OpenAISettings) -> RealtimeEndpoint:
        """OPENAI_API_KEY (required here), OPENAI_REALTIME_URL, OPENAI_TIMEOUT_S."""
        if settings.api_key is None:
            raise EngineUnavailable(
                "the openai engine needs OPENAI_API_KEY (an OpenAI API key); "
                "set it, or choose another engine (TRANSCRIBER_ENGINE / CONVERSATION_ENGINE)"
            )
        return cls(api_key=settings.api_key.get_secret_value(), base_url=settings.realtime_url,
                   timeout_s=settings.timeout_s)


class RealtimeConnection:
    """One open WebSocket to a Realtime endpoint (one upstream session).

    Not safe for concurrent ``recv`` calls (one reader task per connection);
    ``send`` may be called from any task. Once a method raised
    :class:`RealtimeClosed`, the connection is dead: open a new one.
    """

    def __init__(self, ws: ClientConnection, url: str) -> None:
        self._ws = ws
        self.url = url
        #: The code of the last ``error`` event: a close after ``session_expired`` means "new session".
        self.last_error_code: str | None = None

    @classmethod
    async def open(
        cls, endpoint: RealtimeEndpoint, *, model: str | None = None, intent: str | None = None
    ) -> RealtimeConnection:
        url = realtime_url(endpoint.base_url, model=model, intent=intent)
        where = urlsplit(url).netloc
        try:
            ws = await connect(
                url,
                # GA only: never the beta header (that shape is shut down: error + close 4000).
                additional_headers={"Authorization": f"Bearer {endpoint.api_key}"},
                open_timeout=endpoint.timeout_s,
                ping_interval=endpoint.ping_interval_s,
                ping_timeout=endpoint.ping_timeout_s,
                close_timeout=5,
                max_size=MAX_FRAME_BYTES,
                logger=_WIRE_LOG,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            metrics.UPSTREAM_ERRORS.labels("openai", f"http_{status}").inc()
            if status in (401, 403):
                raise RealtimeAuthError(
                    f"the Realtime API at {where} refused the API key (HTTP {status}): check OPENAI_API_KEY"
                ) from None
            decision = classify_handshake(status)
            raise RealtimeClosed(f"the Realtime API at {where} refused the connection (HTTP {status})",
                                 decision, error_code=f"http_{status}") from None
        except InvalidURI as exc:
            raise RealtimeClosed(f"invalid Realtime URL: {exc}", "fatal", error_code="invalid_url") from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise RealtimeClosed(
                f"cannot connect to the Realtime API at {where}: {type(exc).__name__}: {exc}", "reconnect"
            ) from None
        return cls(ws, url)

    async def send(self, event: ClientEvent) -> None:
        try:
            await self._ws.send(to_wire(event))
        except ConnectionClosed as exc:
            raise self._closed(exc) from None

    async def recv(self) -> ServerEvent:
        """The next server event (unknown types come back as UnknownServerEvent)."""
        try:
            frame = await self._ws.recv()
        except ConnectionClosed as exc:
            raise self._closed(exc) from None
        event = parse_server_event(frame)
        if isinstance(event, ErrorEvent):
            self.last_error_code = event.error.code
        return event

    async def close(self) -> None:
        await self._ws.close()

    @property
    def open_now(self) -> bool:
        return self._ws.close_code is None and self._ws.state.name == "OPEN"

    def _closed(self, exc: ConnectionClosed) -> RealtimeError:
        frame = exc.rcvd or exc.sent
        code = frame.code if frame is not None else 1006
        reason = frame.reason if frame is not None else ""
        decision = classify_close(code, reason, self.last_error_code)
        text = f"the Realtime connection closed ({code}{': ' + reason if reason else ''})"
        if decision == "fatal" and (code == 3000 or "invalid_api_key" in f"{reason} {self.last_error_code}"):
            return RealtimeAuthError(f"{text}: the API key was refused, check OPENAI_API_KEY")
        error_code = "session_expired" if decision == "new_session" else "upstream_closed"
        metrics.UPSTREAM_ERRORS.labels("openai", error_code).inc()
        return RealtimeClosed(text, decision, close_code=code, reason=reason, error_code=error_code)
