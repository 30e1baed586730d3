"""python -m gateway_svc: the front door, a Realtime-API-compatible WebSocket gateway.

Configured by environment variables (see the README): REDIS_URL, KEY_PREFIX,
PARTITIONS, GATEWAY_HOST, GATEWAY_PORT, GATEWAY_API_KEYS / GATEWAY_API_KEYS_FILE,
GATEWAY_ALLOW_ANONYMOUS, ... It exits 2 on an invalid setting or when no key is
configured and anonymous access was not asked for.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time

from aiohttp import web

from gateway_svc.app import Gateway
from gateway_svc.auth import KeyRing, load_api_keys
from shared.bus.resp import open_redis
from shared.logs import register_secret, setup_logging
from shared.process import install_fast_loop
from shared.settings import ConnectionSettings, ConversationSettings, GatewaySettings, InvalidSettings, load_settings

log = logging.getLogger("gateway_svc")
#: aiohttp's wait for handlers still running after the drain (its default is 60 s).
SHUTDOWN_TIMEOUT_S = 2.0


def load_keyring(settings: GatewaySettings) -> KeyRing | None:
    """The configured keys, or None for anonymous access; raises InvalidSettings."""
    csv = settings.api_keys.get_secret_value() if settings.api_keys is not None else None
    try:
        keys = load_api_keys(csv, settings.api_keys_file)
    except (ValueError, OSError) as exc:
        raise InvalidSettings(f"invalid setting GATEWAY_API_KEYS / GATEWAY_API_KEYS_FILE: {exc}") from None
    for key in keys:
        register_secret(key)
    if keys:
        return KeyRing(keys)
    if not settings.allow_anonymous:
        raise InvalidSettings("no API keys: set GATEWAY_API_KEYS or GATEWAY_API_KEYS_FILE, or "
                              "GATEWAY_ALLOW_ANONYMOUS=true to serve anyone (a local demo only)")
    return None


async def run(connection: ConnectionSettings, settings: GatewaySettings, keyring: KeyRing | None) -> int:
    # Every socket's writes and delivery marks share this client: a blocking pool makes a
    # burst wait its turn (bench.gateway at 500 sessions ran out of redis-py's default pool).
    redis = await open_redis(connection, blocking_pool=True, max_connections=64)
    system_prompt = os.environ.get("SYSTEM_PROMPT") or str(ConversationSettings.model_fields["system_prompt"].default)
    gateway = Gateway(settings, redis, connection.keys, keyring, system_prompt,
                      (connection.redis_wait_replicas, connection.redis_wait_timeout_ms))
    # The drain closes every socket first; the shutdown timeout only bounds what is left.
    runner = web.AppRunner(gateway.app(), access_log=None, handle_signals=False,
                           shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
    await site.start()
    port = int(runner.addresses[0][1]) if runner.addresses else settings.port
    shown = "localhost" if settings.host in ("0.0.0.0", "::") else settings.host
    log.info("gateway on http://%s:%d/ (WebSocket /v1/realtime)%s", shown, port,
             "; ANONYMOUS access: anyone may connect" if keyring is None else "")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    started = time.monotonic()
    log.info("stopping: closing %d sessions (they may resume on another gateway)", gateway.sessions)
    await gateway.drain()
    await runner.cleanup()
    log.info("stopped in %.1f s", time.monotonic() - started)
    await redis.aclose()
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        connection = load_settings(ConnectionSettings)
        settings = load_settings(GatewaySettings)
        setup_logging("gateway", f"{socket.gethostname()[:24]}-{os.getpid()}",
                      os.environ.get("LOG_LEVEL", "INFO"), os.environ.get("LOG_FORMAT", "auto"))
        keyring = load_keyring(settings)
    except InvalidSettings as exc:
        print(exc, file=sys.stderr)
        return 2
    install_fast_loop()
    return asyncio.run(run(connection, settings, keyring))


if __name__ == "__main__":
    sys.exit(main())
