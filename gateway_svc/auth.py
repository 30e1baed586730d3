"""Who is calling the gateway: API keys, the principals they map to, and
stateless ephemeral keys for browsers.

Pure: no I/O except ``load_api_keys`` reading its file, and the clock is
injected (``now``, unix seconds), so every rule here is tested without sleeping.

- A real key is configured (``load_api_keys``) and never leaves the process:
  logs, metrics and Redis key names use ``Principal.key_id``, a fingerprint.
- An ephemeral key (``ek_...``) is minted from a real key for a browser
  (``POST /v1/realtime/client_secrets`` in GA). It is stateless, so any gateway
  instance verifies it: ``ek_`` + base64url(payload) + ``.`` +
  base64url(HMAC-SHA256(signing secret, ``ek_`` + base64url(payload))). The
  payload names the parent's key_id and the expiry; the signing secret is
  derived from the parent key, so removing that key from the configuration
  revokes every ephemeral key minted from it.
- Both kinds arrive as ``Authorization: Bearer <key>`` (SDKs send a minted key
  that way too) or, from a browser that cannot set headers, as the offered
  WebSocket subprotocol ``openai-insecure-api-key.<key>`` beside ``realtime``.
- Only a real key mints (``mint_ephemeral`` refuses an ephemeral principal):
  a leaked ephemeral key dies at its expiry and cannot extend itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Shorter keys are refused at start-up: a guessable key is no key.
MIN_KEY_CHARS = 16
EPHEMERAL_PREFIX = "ek_"
#: GA bounds of ``expires_after.seconds`` for a minted key, and its default.
EPHEMERAL_TTL_MIN_S = 10
EPHEMERAL_TTL_MAX_S = 7200
EPHEMERAL_TTL_DEFAULT_S = 600
REALTIME_SUBPROTOCOL = "realtime"
KEY_SUBPROTOCOL_PREFIX = "openai-insecure-api-key."

# Anything longer is no key of ours: refused before any decoding or hashing work.
_MAX_PRESENTED_CHARS = 1024
# Domain separation: the signing secret is never the key itself, nor usable as one.
_SIGNING_CONTEXT = b"gateway_svc ephemeral key v1"


class MintRefused(Exception):
    """This principal may not mint an ephemeral key (it is one, or its key is gone)."""


def key_id_of(key: str) -> str:
    """The first 16 hex digits of sha256(key): safe to log and to put in Redis key
    names. Plain sha256 so an operator can find a key's id with
    ``printf %s "$KEY" | sha256sum | cut -c1-16``."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def load_api_keys(keys_csv: str | None, keys_file: str | None) -> list[str]:
    """The configured keys: ``keys_csv`` (comma-separated) then ``keys_file`` (one
    key per line; blank lines and ``#`` comments skipped), trimmed, duplicates
    dropped in order. Raises ValueError naming the source (entry or line number,
    never the key) for a key shorter than MIN_KEY_CHARS or other than printable
    ASCII without whitespace (it could not be sent in a header); OSError if the
    file cannot be read."""
    found: list[tuple[str, str]] = []
    if keys_csv:
        for number, entry in enumerate(keys_csv.split(","), start=1):
            if entry.strip():
                found.append((f"the comma-separated keys, entry {number}", entry.strip()))
    if keys_file:
        text = Path(keys_file).read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if stripped and not stripped.startswith("#"):
                found.append((f"keys file {keys_file}, line {number}", stripped))
    keys: list[str] = []
    for source, key in found:
        _check_key(key, source)
        if key not in keys:
            keys.append(key)
    return keys


def _check_key(key: str, source: str) -> None:
    if len(key) < MIN_KEY_CHARS:
        raise ValueError(f"{source}: an API key must be at least {MIN_KEY_CHARS} characters (this one has {len(key)})")
    # It travels in a header or a subprotocol name: printable ASCII, no spaces.
    if not (key.isascii() and key.isprintable()) or any(ch.isspace() for ch in key):
        raise ValueError(f"{source}: an API key must be printable ASCII without whitespace")


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``key_id`` is the real key's fingerprint (an
    ephemeral key's principal carries its parent's, so quotas count both as one
    caller); ``ephemeral`` says it came with a minted key."""

    key_id: str
    ephemeral: bool


def requested_ttl_s(expires_after: object) -> int:
    """The TTL a GA ``client_secrets`` request asks for: its ``expires_after``
    (``{"anchor": "created_at", "seconds": n}``, or absent/None for the default).
    Raises ValueError with a message fit for an ``invalid_request_error``."""
    if expires_after is None:
        return EPHEMERAL_TTL_DEFAULT_S
    if not isinstance(expires_after, Mapping):
        raise ValueError("expires_after must be an object")
    anchor = expires_after.get("anchor", "created_at")
    if anchor != "created_at":
        raise ValueError("expires_after.anchor must be 'created_at'")
    seconds = expires_after.get("seconds", EPHEMERAL_TTL_DEFAULT_S)
    # bool is an int in Python; `true` is no number of seconds.
    if not isinstance(seconds, int) or isinstance(seconds, bool):
        raise ValueError("expires_after.seconds must be an integer")
    check_ttl_s(seconds)
    return seconds


def check_ttl_s(ttl_s: int) -> None:
    if not EPHEMERAL_TTL_MIN_S <= ttl_s <= EPHEMERAL_TTL_MAX_S:
        raise ValueError(
            f"expires_after.seconds must be between {EPHEMERAL_TTL_MIN_S} and {EPHEMERAL_TTL_MAX_S} (got {ttl_s})"
        )


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Strict unpadded base64url, None for anything else (no silent skipping of junk)."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    # Reject non-canonical encodings, so one token has exactly one spelling.
    return raw if _b64encode(raw) == text else None


class KeyRing:
    """The configured keys, and the checks of what a caller presents.

    Real keys are compared in constant time against every configured key (digest
    against digest, so neither the position of a match nor the key's length
    shows in the timing). Ephemeral keys are looked up by the key_id in their
    payload and their signature checked with ``hmac.compare_digest``."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests: list[bytes] = []
        self._signing_secrets: dict[str, bytes] = {}
        for number, key in enumerate(keys, start=1):
            _check_key(key, f"key {number}")
            key_id = key_id_of(key)
            if key_id in self._signing_secrets:
                # The same key twice, or (odds of 2^-64) two keys with one fingerprint.
                raise ValueError(f"key {number}: a key with the same key_id ({key_id}) is already configured")
            self._digests.append(hashlib.sha256(key.encode()).digest())
            self._signing_secrets[key_id] = hmac.new(key.encode(), _SIGNING_CONTEXT, hashlib.sha256).digest()
        self._key_ids = list(self._signing_secrets)

    def __len__(self) -> int:
        return len(self._digests)

    def from_bearer(self, authorization_header: str | None, now: float) -> Principal | None:
        """The caller of an ``Authorization: Bearer <key>`` header (scheme
        case-insensitive), real or ephemeral; None if absent or not valid at ``now``."""
        if not authorization_header:
            return None
        scheme, _, value = authorization_header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self.resolve(value.strip(), now)

    def from_subprotocols(self, protocols: Sequence[str], now: float) -> Principal | None:
        """The caller of a browser handshake: the key in the one offered
        ``openai-insecure-api-key.<key>`` subprotocol. None if there is none, or
        more than one (ambiguous), or the key is not valid at ``now``. Whether
        ``realtime`` is offered too is the handshake's business, not auth's."""
        values = [p.strip()[len(KEY_SUBPROTOCOL_PREFIX) :] for p in protocols
                  if p.strip().startswith(KEY_SUBPROTOCOL_PREFIX)]
        if len(values) != 1:
            return None
        return self.resolve(values[0], now)

    def resolve(self, presented: str, now: float) -> Principal | None:
        """The caller presenting ``presented`` (a real key or an ``ek_`` key)."""
        if not presented or len(presented) > _MAX_PRESENTED_CHARS:
            return None
        key_id = self._match_real(presented)
        if key_id is not None:
            return Principal(key_id, ephemeral=False)
        if presented.startswith(EPHEMERAL_PREFIX):
            return self._verify_ephemeral(presented, now)
        return None

    def _match_real(self, presented: str) -> str | None:
        digest = hashlib.sha256(presented.encode()).digest()
        matched: str | None = None
        # No early exit: every configured key is compared whatever the outcome.
        for key_id, known in zip(self._key_ids, self._digests, strict=True):
            if hmac.compare_digest(digest, known):
                matched = key_id
        return matched

    def mint_ephemeral(self, principal: Principal, ttl_s: int, now: float) -> tuple[str, int]:
        """A new ephemeral key for ``principal`` valid for ``ttl_s`` seconds:
        (value, expires_at in unix seconds). Raises MintRefused for an ephemeral
        principal or one whose key is no longer configured; ValueError for a TTL
        outside GA's bounds."""
        if principal.ephemeral:
            raise MintRefused("an ephemeral key cannot mint another; use a real API key")
        secret = self._signing_secrets.get(principal.key_id)
        if secret is None:
            raise MintRefused("this API key is no longer configured")
        check_ttl_s(ttl_s)
        expires_at = math.floor(now) + ttl_s
        # The nonce makes every minted key distinct (two mints in one second
        # differ), so a key seen in a report names one mint.
        payload = {"kid": principal.key_id, "exp": expires_at, "n": secrets.token_urlsafe(9)}
        encoded = _b64encode(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
        signed = EPHEMERAL_PREFIX + encoded
        return f"{signed}.{_b64encode(_sign(secret, signed))}", expires_at

    def _verify_ephemeral(self, presented: str, now: float) -> Principal | None:
        signed, dot, signature_text = presented.rpartition(".")
        if not dot:
            return None
        payload_raw = _b64decode(signed[len(EPHEMERAL_PREFIX) :])
        signature = _b64decode(signature_text)
        if payload_raw is None or signature is None:
            return None
        try:
            payload = json.loads(payload_raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(payload, dict):
            return None
        key_id, expires_at = payload.get("kid"), payload.get("exp")
        if not isinstance(key_id, str) or not isinstance(expires_at, int) or isinstance(expires_at, bool):
            return None
        secret = self._signing_secrets.get(key_id)
        if secret is None:  # unknown, or its parent key was removed: revoked
            return None
        if not hmac.compare_digest(signature, _sign(secret, signed)):
            return None
        if now >= expires_at:
            return None
        return Principal(key_id, ephemeral=True)


def _sign(secret: bytes, signed: str) -> bytes:
    return hmac.new(secret, signed.encode("ascii"), hashlib.sha256).digest()
