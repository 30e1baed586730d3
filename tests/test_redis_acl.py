"""Least-privilege Redis against real redis-server processes that load the services'
ACL users (shared/acl), rendered for the test's key prefix:

- a real pipeline with each service connected as its own user, a client as the
  ``simulator``, the operator's tools as ``operator``: utterances answered, a dead
  letter replayed, and not one command refused on the way (Redis's ACL LOG);
- what each user is refused, as NOPERM;
- a permission revoked mid-run: the worker neither crashes nor drops anything, says
  why it is not ready, and goes on once the ACL is loaded again;
- compose's start script fills the template in as the Python renderer does."""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from gateway_svc.app import Gateway
from gateway_svc.auth import KeyRing
from shared.acl.deploy import create_secrets, read_secrets, render
from shared.acl.users import USER_NAMES
from shared.acl.users import conversation as conversation_user
from shared.bus.doorbell import add_with_rings
from shared.follow import StreamFollower
from shared.keys import KeyPatterns, Keys
from shared.models import ConversationEnded, ConversationStarted, ResponseDone, UtteranceText, decode_fields, encode
from shared.redis_server import free_port, ping
from shared.settings import ConversationSettings, GatewaySettings
from simulator_svc.admin import print_dialogue, replay_dead
from simulator_svc.observe import dead_letters, owners, snapshot
from tests.acl_helpers import AclRedis, start_acl_redis
from tests.gateway_helpers import KEY_A, client, collect_until
from tests.runtime_helpers import (
    FAST,
    answered_ids,
    conversation_service,
    entries,
    pipeline,
    running,
    say,
    until,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def acl_redis(tmp_path: Path, prefix: str) -> Iterator[AclRedis]:
    server = start_acl_redis(tmp_path / "redis", prefix)
    try:
        yield server
    finally:
        server.server.cleanup()


def _as_users(acl: AclRedis) -> dict[str, dict[str, object]]:
    return {"transcriber": acl.settings("transcriber"), "conversation": acl.settings("conversation")}


async def _start(client: aioredis.Redis, keys: Keys, cid: str) -> None:
    await add_with_rings(client, keys, [(keys.control_for(cid), encode(ConversationStarted(conversation_id=cid)),
                                         None)])


async def test_each_service_as_its_own_user_answers_and_nothing_is_refused(acl_redis: AclRedis, prefix: str) -> None:
    keys = Keys(prefix)
    client, operator, admin = acl_redis.client("simulator"), acl_redis.client("operator"), acl_redis.admin()
    follower = StreamFollower(client, keys)
    follower.follow(keys.responses("c"))
    try:
        async with pipeline(acl_redis.server.url_as("nobody"), prefix, **_as_users(acl_redis)):
            await _start(client, keys, "c")
            for i in range(3):
                await say(client, keys, "c", f"u{i}", f"utterance number {i}")
            # The client follows the answers as its user (bells, then XREAD).
            done: list[str] = []
            while len(done) < 3:
                for _key, rows in await follower.read(200):
                    done += [e.utterance_id for _, f in rows if isinstance(e := decode_fields(f), ResponseDone)]
            assert done == ["u0", "u1", "u2"]

            # A malformed entry is dead-lettered; the operator lists it and replays it fixed.
            await add_with_rings(client, keys, [(keys.input("c"), b"{not json", 1000)])

            async def lettered() -> bool:
                return bool(await dead_letters(operator, keys))

            await until(lettered)
            ((_, dead_id, letter),) = await dead_letters(operator, keys)
            assert letter.stream == keys.input("c")
            fixed = UtteranceText(conversation_id="c", utterance_id="u3", text="fixed", sent_ms=1).model_dump_json()
            await replay_dead(operator, keys, dead_id, fixed, out=io.StringIO())

            async def replayed() -> bool:
                return await answered_ids(operator, keys, "c") == ["u0", "u1", "u2", "u3"]

            await until(replayed)
            # The operator's views, as its user.
            assert {(o.conversation_id, o.group) for o in await owners(operator, keys)} == {
                ("c", "transcriber"), ("c", "conversation")}
            assert await print_dialogue(operator, keys, "c", out=io.StringIO()) == 0
            assert {w.service for w in (await snapshot(operator, keys)).workers} == {"transcriber", "conversation"}

            await add_with_rings(client, keys, [(keys.input("c"), encode(ConversationEnded(conversation_id="c")),
                                                 1000)])

            async def expiring() -> bool:
                return all([await admin.ttl(k) > 0 for k in keys.conversation_keys("c")])

            await until(expiring)
        # Every command of the run was allowed: the grants cover what the code sends.
        assert await admin.acl_log() == []
    finally:
        await follower.aclose()
        for c in (client, operator, admin):
            await c.aclose()


async def test_chores_and_a_takeover_as_their_users_are_not_refused(acl_redis: AclRedis, prefix: str) -> None:
    """What a short run may not reach: trimming, lag sampling, the stuck-entry sweep, a
    takeover (pending entries claimed, the history rebuilt) by a second worker, and an
    end relayed from the control stream."""
    keys = Keys(prefix)
    client, operator, admin = acl_redis.client("simulator"), acl_redis.client("operator"), acl_redis.admin()
    try:
        async with pipeline(acl_redis.server.url_as("nobody"), prefix, **_as_users(acl_redis)) as (
                transcriber, conversation):
            await _start(client, keys, "c")
            await say(client, keys, "c", "u0", "first")

            async def first() -> bool:
                return await answered_ids(operator, keys, "c") == ["u0"]

            await until(first)
            for runtime in (transcriber, conversation):
                await runtime.chores.trim_controls()
                await runtime.chores.sample_lag()
                await runtime.chores.heartbeat()
                await runtime.leases.refresh_once()
                await runtime.leases.reap_once()
                await runtime.leases.reclaim_stuck_once()
            settings = ConversationSettings(**{**acl_redis.settings("conversation"), **FAST},
                                            conversation_engine="echo", worker_id="second")
            async with running(settings, await conversation_service(settings)) as second:
                conversation.stop()  # hands "c" back: the second worker takes it over

                async def taken_over() -> bool:
                    return "c" in second.live

                await until(taken_over)
                await say(client, keys, "c", "u1", "second")

                async def answered() -> bool:
                    return await answered_ids(operator, keys, "c") == ["u0", "u1"]

                await until(answered)
                # An end written to the control stream: the transcriber relays it in-band.
                ended = ConversationEnded(conversation_id="c")
                await add_with_rings(client, keys, [(keys.control_for("c"), encode(ended), None)])

                async def released() -> bool:
                    return not transcriber.live and not second.live

                await until(released)
        assert await admin.acl_log() == []
    finally:
        for c in (client, operator, admin):
            await c.aclose()


def _refused(keys: Keys) -> dict[str, list[tuple[str, ...]]]:
    """Per user, commands it must be refused (each one the admin could run)."""
    inp, tr, rs = keys.input("c"), keys.transcripts("c"), keys.responses("c")
    control, dead, gw = keys.control(0), keys.dead(0), f"{keys.prefix}:gw:session"
    everyone = [("FLUSHALL",), ("CONFIG", "GET", "maxmemory"), ("KEYS", "*"), ("ACL", "LIST"),
                ("ACL", "SETUSER", "default", "on"), ("SCRIPT", "FLUSH"), ("CLIENT", "LIST"),
                ("XADD", f"x{keys.prefix}:conv:{{0}}:c:input", "*", "d", "x")]  # another prefix's keys
    per_user: dict[str, list[tuple[str, ...]]] = {
        "transcriber": [("XADD", rs, "*", "d", "x"), ("XADD", control, "*", "d", "x"),
                        ("XREADGROUP", "GROUP", "conversation", "w", "STREAMS", tr, ">"), ("DEL", inp),
                        ("HSET", keys.worker("conversation", "w"), "a", "1"), ("XREAD", "STREAMS", rs, "0")],
        "conversation": [("XADD", inp, "*", "d", "x"), ("XACK", inp, "transcriber", "1-0"),
                         ("XADD", tr, "*", "d", "x"), ("XADD", control, "*", "d", "x"), ("DEL", rs),
                         ("XREADGROUP", "GROUP", "transcriber", "w", "STREAMS", inp, ">")],
        "gateway": [("XREADGROUP", "GROUP", "transcriber", "w", "STREAMS", inp, ">"), ("XACK", control, "g", "1-0"),
                    ("XADD", rs, "*", "d", "x"), ("XADD", tr, "*", "d", "x"), ("XRANGE", inp, "-", "+"),
                    ("HSET", keys.worker("transcriber", "w"), "a", "1"), ("XADD", dead, "*", "d", "x"),
                    ("EVAL", "return 1", "1", inp)],
        "simulator": [("XADD", tr, "*", "d", "x"), ("XADD", rs, "*", "d", "x"), ("XRANGE", rs, "-", "+"),
                      ("XREADGROUP", "GROUP", "transcriber", "w", "STREAMS", inp, ">"), ("HSET", gw, "a", "1")],
        "operator": [("XADD", rs, "*", "d", "x"), ("DEL", inp), ("XTRIM", control, "MAXLEN", "0"),
                     ("XGROUP", "CREATE", inp, "g", "0", "MKSTREAM"), ("HSET", gw, "a", "1")],
        "health": [("XADD", inp, "*", "d", "x"), ("XREAD", "STREAMS", rs, "0"), ("GET", gw)],
    }
    assert set(per_user) == set(USER_NAMES)
    return {user: commands + everyone for user, commands in per_user.items()}


async def test_each_user_is_refused_what_it_must_not_do(acl_redis: AclRedis, prefix: str) -> None:
    keys = Keys(prefix)
    admin = acl_redis.admin()
    try:
        await admin.xgroup_create(keys.input("c"), "transcriber", id="0", mkstream=True)
        for user, commands in _refused(keys).items():
            client = acl_redis.client(user)
            try:
                for command in commands:
                    with pytest.raises(NoPermissionError):
                        await client.execute_command(*command)
                        pytest.fail(f"{user} may run {command}")
            finally:
                await client.aclose()
        assert await admin.dbsize() == 1  # nothing was written
    finally:
        await admin.aclose()


async def test_the_gateway_as_its_user_serves_a_conversation_and_nothing_is_refused(
    acl_redis: AclRedis, prefix: str
) -> None:
    """The real gateway (in-process, as the ``gateway`` user) in front of the workers
    (as theirs), driven by the openai SDK: a two-step turn, a resume, the slots and
    the resume hash; the ACL log stays empty."""
    keys = Keys(prefix)
    redis = acl_redis.client("gateway", client_name="gateway")
    admin = acl_redis.admin()
    gateway = Gateway(GatewaySettings(), redis, keys, KeyRing([KEY_A]), "Be brief.")
    server = TestServer(gateway.app())
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    try:
        async with pipeline(acl_redis.server.url_as("nobody"), prefix, **_as_users(acl_redis)):
            async with client(base).realtime.connect(model="local") as conn:
                created = await collect_until(conn, lambda e: e.type == "session.created")
                conversation_id = created[-1].session.conversation_id
                await conn.session.update(session={"type": "realtime", "output_modalities": ["text"],
                                                   "audio": {"input": {"turn_detection": None}}})
                await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                          "content": [{"type": "input_text", "text": "hi"}]})
                await conn.response.create()
                done = (await collect_until(conn, lambda e: e.type == "response.done"))[-1].response
                assert done.status == "completed"
                conn._connection.transport.abort()  # dropped: resumable
            async with client(base).realtime.connect(
                    model="local", extra_query={"conversation_id": conversation_id}) as conn:
                await collect_until(conn, lambda e: e.type == "session.created")
        assert await admin.acl_log() == []
    finally:
        await server.close()
        await redis.aclose()
        await admin.aclose()


async def test_the_default_user_is_disabled(acl_redis: AclRedis) -> None:
    anonymous = aioredis.Redis(host="127.0.0.1", port=acl_redis.server.port)
    try:
        with pytest.raises((AuthenticationError, ResponseError), match="(?i)auth"):
            await anonymous.ping()
    finally:
        await anonymous.aclose()
    assert not ping("127.0.0.1", acl_redis.server.port)


@pytest.mark.parametrize("revoked", ["everything", "its programs"])
async def test_a_revoked_permission_stalls_the_worker_which_says_why_and_resumes_losing_nothing(
    acl_redis: AclRedis, prefix: str, caplog: pytest.LogCaptureFixture, revoked: str
) -> None:
    """``everything``: its reads are refused; ``its programs``: only EVALSHA, so its reads
    go on and its writer's flushes are refused."""
    keys = Keys(prefix)
    client, operator, admin = acl_redis.client("simulator"), acl_redis.client("operator"), acl_redis.admin()
    caplog.set_level(logging.ERROR)
    try:
        async with pipeline(acl_redis.server.url_as("nobody"), prefix, **_as_users(acl_redis)) as (
                transcriber, conversation):
            await _start(client, keys, "c")
            await say(client, keys, "c", "u1", "before")

            async def first() -> bool:
                return await answered_ids(operator, keys, "c") == ["u1"]

            await until(first)
            # The conversation user loses its grants (all, or the one that runs its Lua programs);
            # its root rules, the connection's commands, stay.
            grants = conversation_user(KeyPatterns(prefix)).grants[1:]
            kept = [] if revoked == "everything" else [
                "(" + " ".join(g.rules()) + ")" for g in grants if "evalsha" not in g.commands]
            await admin.execute_command("ACL", "SETUSER", "conversation", "clearselectors", *kept)

            async def refused() -> bool:
                return "NOPERM" in (conversation.not_ready_reason() or "")

            await until(refused)
            assert "redis refuses this user (NOPERM" in (conversation.not_ready_reason() or "")
            await say(client, keys, "c", "u2", "while refused")

            async def transcribed() -> bool:
                return any(getattr(e, "utterance_id", None) == "u2" and e.type == "transcript.final"
                           for e in await entries(operator, keys.transcripts("c")))

            await until(transcribed)  # the transcriber goes on; the conversation worker waits
            assert transcriber.not_ready_reason() is None
            await admin.execute_command("ACL", "LOAD")  # the operator's fix: the file again
            # ACL LOAD disconnects every client (the workers reconnect: a transient error).
            await operator.aclose()
            operator = acl_redis.client("operator")

            async def second() -> bool:
                return await answered_ids(operator, keys, "c") == ["u1", "u2"]

            await until(second)

            async def ready() -> bool:
                return conversation.not_ready_reason() is None

            await until(ready)
        assert await answered_ids(operator, keys, "c") == ["u1", "u2"]  # exactly once each
        assert any("redis refuses this user (NOPERM" in r.getMessage() for r in caplog.records
                   if r.levelno == logging.ERROR)
    finally:
        for c in (client, operator, admin):
            await c.aclose()


@pytest.mark.skipif(not (shutil.which("redis-server") and shutil.which("sha256sum") and shutil.which("sh")),
                    reason="compose's start script needs sh, sha256sum and a redis-server on PATH")
def test_compose_start_script_renders_what_python_renders(tmp_path: Path, prefix: str) -> None:
    secrets = tmp_path / "secrets"
    assert len(create_secrets(secrets)) == len(USER_NAMES)
    rendered, port = tmp_path / "users.acl", free_port()
    env = {**os.environ, "ACL_TEMPLATE": str(ROOT / "deploy" / "redis" / "users.acl"),
           "ACL_SECRETS_DIR": str(secrets), "ACL_RENDERED": str(rendered), "KEY_PREFIX": prefix}
    proc = subprocess.Popen(["sh", str(ROOT / "deploy" / "redis" / "start.sh"), "--port", str(port), "--bind",
                             "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        passwords = read_secrets(secrets)
        ok = False
        for _ in range(200):
            ok = ping("127.0.0.1", port, password=passwords["health"], username="health")
            if ok or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert ok, proc.stderr.read().decode() if proc.poll() is not None and proc.stderr else "no answer"
        assert rendered.read_text() == render(prefix, passwords)
        assert oct(rendered.stat().st_mode & 0o777) == "0o600"
        for user in USER_NAMES:
            assert ping("127.0.0.1", port, password=passwords[user], username=user), user
            assert not ping("127.0.0.1", port, password=passwords[user] + "x", username=user), user
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()

    # A user without its secret: the script refuses to start, naming it.
    (secrets / "redis_gateway").unlink()
    failed = subprocess.run(["sh", str(ROOT / "deploy" / "redis" / "start.sh"), "--port", str(port)], env=env,
                            capture_output=True, text=True, timeout=30, check=False)
    assert failed.returncode == 2 and "no password secret for: gateway" in failed.stderr
