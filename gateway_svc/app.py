"""The gateway's HTTP side (aiohttp): the Realtime WebSocket at ``/v1/realtime``,
ephemeral keys at ``POST /v1/realtime/client_secrets``, the browser page at
``/``, and ``/healthz`` / ``/readyz``.

A socket's life: authenticate at the handshake (401 before any upgrade), take a
session slot of its key (429 when the key has its maximum), start or resume a
conversation, then two tasks: the receive loop (client events, rate-limited per
key) and the outbox's sender. The gateway keeps no state but its sockets: a
resumed conversation's settings and delivery marks are in Redis.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway_svc import events, meters
from gateway_svc.auth import KeyRing, MintRefused, Principal, requested_ttl_s
from gateway_svc.drain import CLOSE_TIMEOUT_S, OpenSocket, drain_all
from gateway_svc.outbox import Mark, Outbox, SlowClient
from gateway_svc.pipeline import PipelineReader, PipelineUnavailable, PipelineWriter
from gateway_svc.quotas import KeyQuotas, Limits, QuotaVerdict, SessionSlots
from gateway_svc.resume import ResumeStore
from gateway_svc.session import RealtimeSession
from gateway_svc.session_config import SessionConfig, SessionType
from shared import metrics
from shared.keys import Keys
from shared.models import is_ident
from shared.settings import GatewaySettings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
#: Refused events in a row after which a socket is closed as abusive (1008).
MAX_REFUSED_IN_A_ROW = 200
SLOT_REFRESH_S = 10.0
#: The hosted API's largest client event.
API_MAX_EVENT_BYTES = 15 * 1024 * 1024
ANONYMOUS = Principal(key_id="anonymous", ephemeral=False)


@dataclass
class Gateway:
    settings: GatewaySettings
    redis: aioredis.Redis
    keys: Keys
    keyring: KeyRing | None
    #: What the deployment's workers use when a conversation brings no instructions (shown to clients).
    system_prompt: str
    #: REDIS_WAIT_REPLICAS and REDIS_WAIT_TIMEOUT_MS (durability of the client's writes).
    wait: tuple[int, int] = (0, 1000)

    def __post_init__(self) -> None:
        s = self.settings
        self.limits = Limits(max_sessions=s.max_sessions_per_key, events_per_s=s.events_per_s,
                             audio_s_per_min=s.audio_s_per_min, max_event_bytes=s.max_event_bytes)
        self.quotas = KeyQuotas(self.limits)
        self.slots = SessionSlots(self.redis, self.keys, self.limits, ttl_s=int(SLOT_REFRESH_S * 3))
        self.store = ResumeStore(self.redis, self.keys, s.resume_ttl_s)
        self.reader = PipelineReader(self.redis, self.keys)
        self.writer = PipelineWriter(self.redis, self.keys, self.wait)
        #: The sockets open now, by an id of their own (a drain closes them all).
        self.open: dict[str, OpenSocket] = {}
        #: Set at SIGTERM: /readyz says 503 and new sockets are refused.
        self.draining = False
        #: Drains of sockets whose handshake was under way when the drain began (kept: a task
        #: nothing refers to may be collected).
        self._late_drains: set[asyncio.Task[None]] = set()

    @property
    def sessions(self) -> int:
        return len(self.open)

    async def drain(self) -> None:
        """Stop taking sockets and close the open ones with 1001 (gateway_svc/drain.py)."""
        self.draining = True
        await drain_all(list(self.open.values()), self.settings.drain_s)
        if self._late_drains:
            await asyncio.wait(set(self._late_drains))

    # --- auth -----------------------------------------------------------------------------------

    def authenticate(self, request: web.Request) -> Principal | None:
        if self.keyring is None:
            return ANONYMOUS
        now = time.time()
        principal = self.keyring.from_bearer(request.headers.get("Authorization"), now)
        if principal is None:
            offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
            principal = self.keyring.from_subprotocols(offered, now)
        return principal

    # --- routes ---------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/v1/realtime", self.realtime)
        app.router.add_post("/v1/realtime/client_secrets", self.client_secrets)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/", self.page)
        if STATIC_DIR.is_dir():
            app.router.add_static("/static/", STATIC_DIR)
        app.on_shutdown.append(self._shutdown)
        return app

    async def _shutdown(self, app: web.Application) -> None:
        await self.reader.aclose()

    async def page(self, request: web.Request) -> web.StreamResponse:
        index = STATIC_DIR / "index.html"
        if not index.is_file():
            raise web.HTTPNotFound(text="the page is not installed")
        return web.FileResponse(index)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def metrics(self, request: web.Request) -> web.Response:
        # CONTENT_TYPE_LATEST carries a charset, which web.Response wants apart.
        response = web.Response(body=generate_latest(metrics.REGISTRY))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def readyz(self, request: web.Request) -> web.Response:
        if self.draining:
            return web.Response(status=503, text="draining\n")
        try:
            await asyncio.wait_for(self.redis.ping(), timeout=2)
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready", with the reason
            return web.Response(status=503, text=f"redis: {type(exc).__name__}\n")
        return web.Response(text="ready\n")

    async def client_secrets(self, request: web.Request) -> web.Response:
        if self.keyring is None:
            return _http_error(400, "no API keys are configured: connect without a key", "no_keys_configured")
        principal = self.keyring.from_bearer(request.headers.get("Authorization"), time.time())
        if principal is None or principal.ephemeral:
            return _http_error(401, "Incorrect API key provided.", "invalid_api_key", "authentication_error")
        try:
            body = await request.json() if request.can_read_body else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _http_error(400, "the body is not valid JSON", "invalid_json")
        if not isinstance(body, dict):
            return _http_error(400, "the body must be a JSON object", "invalid_value")
        expires_after = body.get("expires_after")
        try:
            ttl = requested_ttl_s(expires_after) if expires_after is not None else self.settings.client_secret_ttl_s
        except ValueError as exc:
            return _http_error(400, str(exc), "invalid_value", param="expires_after")
        try:
            value, expires_at = self.keyring.mint_ephemeral(principal, ttl, time.time())
        except MintRefused as exc:
            return _http_error(401, str(exc), "invalid_api_key", "authentication_error")
        session = body.get("session") if isinstance(body.get("session"), dict) else {"type": "realtime"}
        return web.json_response({"value": value, "expires_at": expires_at, "session": session})

    # --- the socket -------------------------------------------------------------------------------

    async def realtime(self, request: web.Request) -> web.StreamResponse:
        if self.draining:
            meters.refused("draining")
            return _http_error(503, "this gateway is shutting down: connect again (another gateway answers)",
                               "gateway_draining", "server_error")
        principal = self.authenticate(request)
        if principal is None:
            meters.refused("unauthorized")
            return _http_error(401, "Incorrect API key provided.", "invalid_api_key", "authentication_error")
        query = request.query
        session_type: SessionType = "transcription" if query.get("intent") == "transcription" else "realtime"
        resume_id = query.get("conversation_id")
        if resume_id is not None:
            resumable = await self.store.load(resume_id) if is_ident(resume_id) else None
            if resumable is None or resumable.owner != principal.key_id:
                meters.refused("not_found")
                return _http_error(404, "no conversation with that id to resume", "conversation_not_found")
            conversation_id = resume_id
            config = SessionConfig.from_json(resumable.session)
            since = (resumable.transcripts_since, resumable.responses_since)
        else:
            conversation_id = f"conv_{uuid.uuid4().hex[:24]}"
            config = SessionConfig.default(session_type, query.get("model") or self.settings.model_name,
                                           self.system_prompt)
            since = ("0-0", "0-0")
        slot = uuid.uuid4().hex
        if not await self.slots.acquire(principal.key_id, slot):
            meters.refused("session_limit")
            return _http_error(429, f"this key already has {self.limits.max_sessions} sessions open",
                               "session_limit_reached", "rate_limit_exceeded")
        try:
            if resume_id is None:
                await self.store.create(conversation_id, principal.key_id, config.to_json())
            return await self._serve_socket(request, principal, conversation_id, config, since,
                                            resumed=resume_id is not None, slot=slot)
        finally:
            await self.slots.release(principal.key_id, slot)

    async def _serve_socket(self, request: web.Request, principal: Principal, conversation_id: str,
                            config: SessionConfig, since: tuple[str, str], resumed: bool,
                            slot: str) -> web.StreamResponse:
        # Frames up to the API's own cap (15 MiB) are read, so one over GATEWAY_MAX_EVENT_BYTES gets
        # a GA error and the session goes on; only a larger one closes the socket (1009).
        ws = web.WebSocketResponse(protocols=("realtime",), max_msg_size=max(API_MAX_EVENT_BYTES,
                                                                             self.settings.max_event_bytes),
                                   heartbeat=30.0, timeout=CLOSE_TIMEOUT_S)
        await ws.prepare(request)
        extra = {"conversation_id": conversation_id}

        async def mark(m: Mark) -> None:
            try:
                await self.store.delivered(conversation_id, m.stream_kind, m.entry_id)
            except Exception:
                meters.pipeline_error("mark")
                raise

        outbox = Outbox(ws.send_str, mark)
        session = RealtimeSession(
            conversation_id=conversation_id, config=config, outbox=outbox, writer=self.writer, store=self.store,
            allow_instructions=self.settings.allow_client_instructions,
            allow_audio=lambda seconds: _refusal(self.quotas.allow_audio(principal.key_id, seconds, time.monotonic())),
            started=resumed)
        session.hello()

        sock = OpenSocket(conversation_id, ws, session, stop_reading=lambda: self.reader.unsubscribe(conversation_id))

        def on_entry(kind: str, entry_id: str, entry: Any) -> None:
            try:
                session.view.handle(kind, entry_id, entry)
            except SlowClient as exc:
                log.warning("closing a slow client: %s", exc, extra=extra)
                asyncio.get_running_loop().create_task(sock.close(WSCloseCode.TRY_AGAIN_LATER))

        self.reader.subscribe(conversation_id, on_entry, *since)
        sender = asyncio.create_task(self._send_all(sock, extra))
        keeper = asyncio.create_task(self._keep_slot(principal.key_id, slot))
        self.open[slot] = sock
        meters.SESSIONS_OPEN.set(len(self.open))
        meters.OPENED["resumed" if resumed else "new"].inc()
        if self.draining:  # its handshake passed just before the drain began: it is drained too
            late = asyncio.create_task(drain_all([sock], self.settings.drain_s))
            late.add_done_callback(self._late_drains.discard)
            self._late_drains.add(late)
        log.info("session open (%s)", "resumed" if resumed else "new", extra=extra)
        try:
            await self._receive_all(sock, principal)
        finally:
            del self.open[slot]
            meters.SESSIONS_OPEN.set(len(self.open))
            self.reader.unsubscribe(conversation_id)
            sender.cancel()
            keeper.cancel()
            await asyncio.gather(sender, keeper, return_exceptions=True)
            try:
                await session.close(sock.ended_by_client)
            except PipelineUnavailable as exc:
                log.warning("could not end the conversation: %s", exc, extra=extra)
            log.info("session closed (code %s)", ws.close_code, extra=extra)
        return ws

    async def _keep_slot(self, key_id: str, slot: str) -> None:
        """Refresh this socket's session slot while it lives (a dead gateway's slots expire).
        The first wait is random, so sockets opened together (a reconnect storm) do not
        refresh together ever after."""
        await asyncio.sleep(random.uniform(0, SLOT_REFRESH_S))
        while True:
            await asyncio.sleep(SLOT_REFRESH_S)
            try:
                await self.slots.refresh(key_id, slot)
            except Exception as exc:  # noqa: BLE001 - Redis away: the next refresh tries again
                log.warning("could not refresh a session slot: %s", exc)

    async def _send_all(self, sock: OpenSocket, extra: dict[str, str]) -> None:
        try:
            await sock.session.outbox.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the socket broke: end the receive loop too
            log.info("sending stopped: %s", exc, extra=extra)
            await sock.close(WSCloseCode.GOING_AWAY)

    async def _receive_all(self, sock: OpenSocket, principal: Principal) -> None:
        ws, session = sock.ws, sock.session
        refused_in_a_row = 0
        async for msg in ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                meters.EVENTS_IN.inc()
            if msg.type == WSMsgType.TEXT:
                data: str = msg.data
                verdict = self.quotas.allow_event(principal.key_id, len(data.encode()), time.monotonic())
                if not verdict.ok:
                    refused_in_a_row += 1
                    if refused_in_a_row > MAX_REFUSED_IN_A_ROW:
                        await sock.close(WSCloseCode.POLICY_VIOLATION, b"too many refused events")
                        return
                    session.outbox.put(events.error(verdict.message, type_=verdict.type, code=verdict.code))
                    continue
                refused_in_a_row = 0
                try:
                    message = json.loads(data)
                except json.JSONDecodeError as exc:
                    session.outbox.put(events.error(f"the event is not valid JSON: {exc.msg}", code="invalid_json"))
                    continue
                try:
                    await session.handle(message)
                except PipelineUnavailable as exc:
                    session.outbox.put(events.error(str(exc), type_="server_error", code="pipeline_unavailable"))
            elif msg.type == WSMsgType.BINARY:
                session.outbox.put(events.error("binary frames are not supported: send JSON text events",
                                                code="invalid_event"))
            elif msg.type == WSMsgType.ERROR:
                return


def _refusal(verdict: QuotaVerdict) -> str | None:
    return None if verdict.ok else verdict.message


def _http_error(status: int, message: str, code: str, type_: str = "invalid_request_error",
                param: str | None = None) -> web.Response:
    return web.json_response({"error": {"type": type_, "code": code, "message": message, "param": param}},
                             status=status)
