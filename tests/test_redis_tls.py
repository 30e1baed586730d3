"""``rediss://`` end to end: a TLS-only redis-server (``--port 0 --tls-port``) with a
CA this test makes (the openssl command), that requires client certificates and
runs the services' ACL users. Both workers and a client talk to it over TLS, each
as its user; a client that trusts another CA fails, and says why."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.bus.doorbell import add_with_rings
from shared.bus.resp import connect_to
from shared.follow import StreamFollower
from shared.keys import Keys
from shared.models import ConversationStarted, ResponseDone, decode_fields, encode
from shared.redis_server import NoRedisServer, find_server_binary, tls_supported
from shared.runtime import OwnershipRuntime
from shared.settings import ConnectionSettings, TranscriberSettings
from tests.acl_helpers import AclRedis, start_acl_redis
from tests.runtime_helpers import FAST, pipeline, say, transcriber_service, until
from tests.tls_helpers import Authority, openssl, server_and_client


def _tls_redis_binary() -> str | None:
    """Why this machine cannot run the test, or None."""
    try:
        binary, origin = find_server_binary()
    except NoRedisServer as exc:
        return str(exc)
    if not tls_supported(binary):
        return f"{origin} ({binary}) is built without TLS"
    if openssl() is None:
        return "no openssl command to make the test's CA"
    return None


_why_not = _tls_redis_binary()
pytestmark = pytest.mark.skipif(_why_not is not None, reason=_why_not or "")


@pytest.fixture
def tls_redis(tmp_path: Path, prefix: str) -> Iterator[tuple[AclRedis, dict[str, Any]]]:
    """The server, and the settings fields every user adds to talk to it (CA, client certificate)."""
    _ca, files = server_and_client(tmp_path / "pki")
    server = start_acl_redis(tmp_path / "redis", prefix, tls=files)
    try:
        yield server, {"redis_ca_cert": files.ca, "redis_client_cert": files.client_cert,
                       "redis_client_key": files.client_key}
    finally:
        server.server.cleanup()


async def test_workers_and_a_client_talk_over_tls_each_as_its_user(
    tls_redis: tuple[AclRedis, dict[str, Any]], prefix: str
) -> None:
    acl, tls = tls_redis
    assert acl.server.url_as("simulator").startswith("rediss://")
    keys = Keys(prefix)
    client = acl.client("simulator", **tls)
    follower = StreamFollower(client, keys)
    follower.follow(keys.responses("c"))
    try:
        async with pipeline(acl.server.url_as("nobody"), prefix, transcriber=acl.settings("transcriber", **tls),
                            conversation=acl.settings("conversation", **tls)):
            await add_with_rings(client, keys, [(keys.control_for("c"),
                                                 encode(ConversationStarted(conversation_id="c")), None)])
            for i in range(3):
                await say(client, keys, "c", f"u{i}", f"over tls {i}")
            done: list[str] = []
            while len(done) < 3:
                for _key, rows in await follower.read(200):
                    done += [e.utterance_id for _, f in rows if isinstance(e := decode_fields(f), ResponseDone)]
            assert done == ["u0", "u1", "u2"]
    finally:
        await follower.aclose()
        await client.aclose()


async def test_a_client_that_trusts_another_ca_fails_with_a_clear_error(
    tls_redis: tuple[AclRedis, dict[str, Any]], tmp_path: Path
) -> None:
    acl, tls = tls_redis
    other = Authority.create(tmp_path / "other-pki", "other-ca")
    client = connect_to(ConnectionSettings(**acl.settings("simulator", **{**tls, "redis_ca_cert": other.cert})))
    try:
        with pytest.raises(RedisConnectionError, match="certificate verify failed"):
            await client.ping()
    finally:
        await client.aclose()


async def test_a_worker_that_trusts_another_ca_is_not_ready_and_logs_why(
    tls_redis: tuple[AclRedis, dict[str, Any]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    acl, tls = tls_redis
    other = Authority.create(tmp_path / "other-pki", "other-ca")
    settings = TranscriberSettings(**acl.settings("transcriber", **{**tls, "redis_ca_cert": other.cert}),
                                   transcriber_engine="simulated", **FAST)
    redis = connect_to(settings)
    runtime = OwnershipRuntime(settings, await transcriber_service(settings), redis)
    caplog.set_level(logging.WARNING)
    task = asyncio.create_task(runtime.run())
    try:
        async def said_why() -> bool:
            return any("certificate verify failed" in r.getMessage() for r in caplog.records)

        await until(said_why)
        assert runtime.not_ready_reason() == "connecting to redis"
        assert not task.done()  # it waits (the CA may be fixed on the server's side), it does not crash
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await redis.aclose()
