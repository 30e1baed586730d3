"""Process wiring shared by the two session services: the command line, the
settings, logging, the Redis client, signals, the event loop. Each service's
``__main__`` calls :func:`worker_cli` with its settings class and a factory of
its service object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from shared.bus.resp import open_redis
from shared.engines.base import EngineUnavailable
from shared.http_server import HealthServer
from shared.logs import register_secret, setup_logging
from shared.metrics import REGISTRY
from shared.runtime import OwnershipRuntime
from shared.service import Service
from shared.settings import CommonSettings, InvalidSettings, LocalEngineSettings, OpenAISettings, load_settings
from shared.stalls import StallMonitor

log = logging.getLogger(__name__)


def install_fast_loop() -> None:
    """uvloop when installed: measured faster for this many-small-messages load."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def tune_gc() -> None:
    """Once the engine is loaded: move every object alive now (modules, models,
    weights' wrappers) out of the collector's sight, and collect the young
    generation less often. The hot path allocates many short-lived containers
    and makes almost no cycles; the default threshold (700) ran a collection
    every few entries, and a full one walked every start-up object."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


async def serve(
    settings: CommonSettings,
    make_service: Callable[[], Awaitable[Service]],
    on_runtime: Callable[[OwnershipRuntime], Any] | None = None,
) -> int:
    holder: dict[str, OwnershipRuntime] = {}

    def not_ready_reason() -> str | None:
        runtime = holder.get("runtime")
        return "loading the engine" if runtime is None else runtime.not_ready_reason()

    health = HealthServer(REGISTRY, not_ready_reason)
    port = None
    if settings.metrics_enabled:
        port = await health.start(settings.metrics_host, settings.metrics_port)
    try:
        try:
            service = await make_service()
        except EngineUnavailable as exc:
            log.error("cannot start: %s", exc)
            return 2
        tune_gc()
        stalls = StallMonitor()
        stalls.start()
        redis = await open_redis(settings)
        runtime = OwnershipRuntime(settings, service, redis, metrics_port=port)
        holder["runtime"] = runtime
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, runtime.stop)
        if on_runtime is not None:
            on_runtime(runtime)
        try:
            await runtime.run()
        finally:
            closer = getattr(service, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()
            await redis.aclose()
            stalls.stop()
    finally:
        await health.close()
    log.info("stopped cleanly")
    return 0


def run_worker(
    service_name: str,
    settings: CommonSettings,
    openai: OpenAISettings,
    make_service: Callable[[], Awaitable[Service]],
) -> int:
    register_secret(urlsplit(settings.redis_url.get_secret_value()).password)
    register_secret(settings.redis_password())
    if openai.api_key is not None:
        register_secret(openai.api_key.get_secret_value())
    setup_logging(service_name, settings.worker_id, settings.log_level, settings.log_format)
    install_fast_loop()
    return asyncio.run(serve(settings, make_service))


S = TypeVar("S", bound=CommonSettings)
#: Builds a service's ``make_service`` from its parsed settings.
ServiceFactory = Callable[[S, OpenAISettings, LocalEngineSettings], Callable[[], Awaitable[Service]]]


def worker_cli(
    service_name: str,
    description: str,
    settings_class: type[S],
    engine_env: str,
    argv: list[str] | None,
    service_factory: ServiceFactory[S],
) -> int:
    """The command line both session services share: ``--help``, ``--engine``,
    ``--max-sessions``; everything else comes from the environment.

    Every setting is parsed here, before anything starts: an invalid one is one
    line on stderr naming its variable, and exit code 2."""
    parser = argparse.ArgumentParser(prog=f"python -m {service_name}_svc", description=description)
    parser.add_argument("--engine", help=f"override {engine_env}")
    parser.add_argument("--max-sessions", type=int, help="override MAX_SESSIONS")
    args = parser.parse_args(argv)
    overrides: dict[str, object] = {}
    if args.engine:
        overrides[engine_env.lower()] = args.engine
    if args.max_sessions:
        overrides["max_sessions"] = args.max_sessions
    try:
        settings = load_settings(settings_class, overrides)
        openai = load_settings(OpenAISettings)
        local = load_settings(LocalEngineSettings)
    except InvalidSettings as exc:
        print(exc, file=sys.stderr)
        return 2
    return run_worker(service_name, settings, openai, service_factory(settings, openai, local))
