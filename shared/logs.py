"""Logging set-up: JSON lines (containers) or readable console lines (terminals).

Every line carries the service and worker id; lines about a conversation carry
``conversation_id`` (and ``utterance_id`` where known) passed through
``extra=``. Secrets are scrubbed from every line: registered secret values
and the password part of any ``redis://user:pass@`` URL.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]+)@", re.I)
#: ``user:pass@host`` without a scheme (a host:port list, a hand-written REDIS_URL).
_BARE_PASSWORD = re.compile(r"(?<![\w/:*])(?P<user>[\w.%+-]*):(?P<pw>[^@\s/:*]+)@(?=[\w.-])")
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._-]+")
#: OpenAI-style keys, registered or not (an upstream error text may quote one).
_API_KEY = re.compile(r"\bsk-[A-Za-z0-9_-]{16,}")
_SECRETS: set[str] = set()
_CONTEXT_FIELDS = ("conversation_id", "utterance_id", "entry_id", "engine")


def register_secret(value: str | None) -> None:
    """Never print this value (an API key, a password)."""
    if value and len(value) >= 4:
        _SECRETS.add(value)


def scrub(text: str) -> str:
    text = _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", text)
    text = _BARE_PASSWORD.sub(r"\g<user>:***@", text)
    text = _BEARER.sub(r"\1***", text)
    text = _API_KEY.sub("sk-***", text)
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "***")
    return text


class _Base(logging.Formatter):
    def __init__(self, service: str, worker_id: str) -> None:
        super().__init__()
        self.service = service
        self.worker_id = worker_id

    def context(self, record: logging.LogRecord) -> dict[str, Any]:
        return {f: getattr(record, f) for f in _CONTEXT_FIELDS if getattr(record, f, None) is not None}


class JsonFormatter(_Base):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "service": self.service,
            "worker_id": self.worker_id,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(self.context(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return scrub(json.dumps(doc, default=str))


class ConsoleFormatter(_Base):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        ctx = " ".join(f"{k}={v}" for k, v in self.context(record).items())
        line = f"{ts} {record.levelname:<7} {self.service}[{self.worker_id}] {record.getMessage()}"
        if ctx:
            line += f"  ({ctx})"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return scrub(line)


def setup_logging(service: str, worker_id: str, level: str = "INFO", fmt: str = "auto") -> None:
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service, worker_id) if fmt == "json" else ConsoleFormatter(service, worker_id))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter stays out of the operator's view unless asked for.
    for noisy in ("websockets", "faster_whisper", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
