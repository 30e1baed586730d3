"""The retry policy of a Realtime connection: what to do after a close or a
failed handshake (the websockets ``process_exception`` pattern): reconnect
with backoff, open a new session at once, or give up with a clear error.
Pure module: no I/O.
"""

from __future__ import annotations

from typing import Literal

CloseDecision = Literal["reconnect", "new_session", "fatal"]

#: Closes that say "try again later": going away, abnormal, server error, restart, try again later.
TRANSIENT_CLOSE_CODES = frozenset({1000, 1001, 1005, 1006, 1011, 1012, 1013, 1014})
#: Closes that retrying cannot fix: protocol errors, policy, too big, auth (3000), API shape (4000).
FATAL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1008, 1009, 1010, 3000, 3003})


def classify_close(code: int | None, reason: str = "", last_error_code: str | None = None) -> CloseDecision:
    """What to do when a connection closed with ``code`` / ``reason``.

    ``last_error_code``: the code of the last ``error`` event before the close
    (``session_expired`` arrives that way, followed by a 1001 close).

    - ``session_expired`` -> ``new_session`` (connect again now, replay history);
    - 3000, ``invalid_api_key``, 401, beta-shape 4000, other protocol errors -> ``fatal``;
    - 1001/1006/1011/1012/1013 and an unknown close -> ``reconnect`` with backoff.

    Every reconnect is a new upstream session: the caller replays history either way.
    """
    text = f"{reason} {last_error_code or ''}".lower()
    if "session_expired" in text:
        return "new_session"
    if code in FATAL_CLOSE_CODES or "invalid_api_key" in text or "401" in text.split():
        return "fatal"
    if code is not None and 4000 <= code < 5000:
        return "fatal"
    return "reconnect"


def classify_handshake(status: int) -> CloseDecision:
    """An HTTP status that refused the WebSocket upgrade: 401/403 and other
    4xx are configuration errors (fatal); 408, 429 and 5xx may pass."""
    if status in (408, 429) or status >= 500:
        return "reconnect"
    return "fatal"
