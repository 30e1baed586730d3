"""Operations: /metrics, /healthz, /readyz, JSON logs without secrets, the
monitor against a live run, dead-letter replay, and docker-compose.yml checked
without a Docker engine."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis as syncredis
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from shared.acl.deploy import GATEWAY_KEYS_FILE, create_gateway_keys
from shared.acl.users import USER_NAMES
from shared.devstack import ServiceProcess, Stack, wait_http_ready
from shared.keys import Keys
from shared.models import ConversationStarted, ResponseDone, UtteranceText, decode_fields, encode
from shared.redis_server import RedisServer, free_port, start_embedded
from simulator_svc.monitor import render
from simulator_svc.observe import snapshot
from tests.acl_helpers import AclRedis, start_acl_redis
from tests.conftest import ROOT, base_env, run_simulator, wait_for_workers

pytestmark = pytest.mark.slow


def _worker_ports(redis_url: str, prefix: str) -> dict[str, int]:
    r = syncredis.Redis.from_url(redis_url, decode_responses=True)
    ports = {}
    for key in r.scan_iter(match=f"{prefix}:worker:*"):
        h = r.hgetall(key)
        ports[h["service"]] = int(h["metrics_port"])
    r.close()
    return ports


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def _total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


def test_metrics_count_what_was_sent(stack: Stack, redis_url: str, prefix: str) -> None:
    stack.start("transcriber_svc")
    stack.start("conversation_svc")
    wait_for_workers(redis_url, prefix, 2)
    rc, summary, err = run_simulator(stack.env, "--conversations", "5", "--utterances", "6", "--rate", "10")
    assert rc == 0, err
    sent = summary["utterances"]
    time.sleep(0.5)
    ports = _worker_ports(redis_url, prefix)
    conv = _samples(_get(ports["conversation"], "/metrics")[1])
    trans = _samples(_get(ports["transcriber"], "/metrics")[1])
    assert _total(trans, "vab_entries_handled_total", stream="input", type="utterance.text") == sent
    assert _total(conv, "vab_entries_handled_total", stream="transcripts", type="transcript.final") == sent
    for hist in ("vab_utterance_end_to_transcript_seconds", "vab_utterance_end_to_first_delta_seconds",
                 "vab_utterance_end_to_done_seconds"):
        assert _total(conv, hist + "_count") == sent, hist
    assert _total(conv, "vab_queue_time_seconds_count", stream="transcripts") >= sent
    # Each entry is read once and handled once (finals, deltas, the relayed ended, on both hops).
    for samples, stream in ((trans, "input"), (conv, "transcripts")):
        read = _total(samples, "vab_entries_read_total", stream=stream)
        assert read == _total(samples, "vab_entries_handled_total", stream=stream)
    assert _total(conv, "vab_llm_first_token_seconds_count", engine="echo") == sent
    # The conversations ended: every session slot is free again.
    assert _total(conv, "vab_sessions_owned") == 0
    assert _total(trans, "vab_sessions_owned") == 0
    # Bounded labels: no conversation id anywhere in the exposition.
    assert "sim-" not in _get(ports["conversation"], "/metrics")[1]


def test_readyz_follows_redis_and_healthz_stays_up(own_redis_server: RedisServer, prefix: str, tmp_path: Path) -> None:
    stack = Stack(base_env(own_redis_server.url, prefix, READ_BLOCK_MS="100"), tmp_path / "logs")
    try:
        stack.start("conversation_svc")
        wait_for_workers(own_redis_server.url, prefix, 1)
        port = _worker_ports(own_redis_server.url, prefix)["conversation"]
        assert _get(port, "/readyz")[0] == 200
        own_redis_server.stop()
        deadline = time.monotonic() + 10
        while _get(port, "/readyz")[0] != 503 and time.monotonic() < deadline:
            time.sleep(0.1)
        status, body = _get(port, "/readyz")
        assert status == 503 and "redis" in body
        assert _get(port, "/healthz")[0] == 200
        own_redis_server.start()
        deadline = time.monotonic() + 15
        while _get(port, "/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _get(port, "/readyz")[0] == 200
        assert _get(port, "/nope")[0] == 404
    finally:
        stack.stop_all()


def test_an_unbindable_port_is_a_log_line_not_a_dead_worker(stack: Stack, redis_url: str, prefix: str) -> None:
    first = stack.start("conversation_svc", {"METRICS_PORT": "0"})
    wait_for_workers(redis_url, prefix, 1)
    taken = _worker_ports(redis_url, prefix)["conversation"]
    second = stack.start("conversation_svc", {"METRICS_PORT": str(taken)})
    wait_for_workers(redis_url, prefix, 2)
    assert first.alive() and second.alive()
    assert "cannot be bound" in second.log_text()


def _json_lines(proc: ServiceProcess) -> list[dict[str, object]]:
    return [json.loads(line) for line in proc.log_text().splitlines() if line.strip()]


def test_logs_are_json_with_ids_and_never_show_secrets(prefix: str, tmp_path: Path) -> None:
    password = "redis-pass-7f3a91"
    api_key = "sk-test-do-not-print-4b1d"
    server = start_embedded(appendonly=False, password=password)
    try:
        env = base_env(server.url, prefix, OPENAI_API_KEY=api_key, LOG_LEVEL="DEBUG")
        stack = Stack(env, tmp_path / "logs")
        procs = [stack.start("transcriber_svc"), stack.start("conversation_svc")]
        wait_for_workers(server.url, prefix, 2)
        rc, summary, err = run_simulator(env, "--conversations", "2", "--utterances", "2", "--rate", "20")
        assert rc == 0, err
        stack.stop_all()
        for proc in procs:
            text = proc.log_text()
            assert password not in text and api_key not in text
            lines = _json_lines(proc)  # every line parses
            assert all({"ts", "level", "service", "worker_id", "msg"} <= set(line) for line in lines)
            about = [line for line in lines if "finished" in str(line["msg"])]
            assert about and all(str(line.get("conversation_id", "")).startswith("sim-") for line in about)
        r = syncredis.Redis.from_url(server.url)
        for key in r.scan_iter(match=f"{prefix}:*"):
            if r.type(key) == b"stream":
                for _, fields in r.xrange(key):
                    blob = b" ".join(fields.values())
                    assert password.encode() not in blob and api_key.encode() not in blob
            else:
                blob = b" ".join(v for v in r.hgetall(key).values()) if r.type(key) == b"hash" else b""
                assert password.encode() not in blob and api_key.encode() not in blob
        r.close()
    finally:
        server.cleanup()


def _render_once(redis_url: str, keys: Keys) -> tuple[str, int, int]:
    """One monitor frame as text, with the live conversation and answer counts."""
    import redis.asyncio as aioredis

    async def frame() -> tuple[str, int, int]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            snap = await snapshot(client, keys)
        finally:
            await client.aclose()
        console = Console(record=True, width=140)
        console.print(render(snap, keys, "test"))
        return console.export_text(), len(snap.conversations()), snap.answered_last_min

    return asyncio.run(frame())


def test_monitor_renders_a_live_run(stack: Stack, redis_url: str, prefix: str) -> None:
    stack.start("transcriber_svc")
    stack.start("conversation_svc")
    wait_for_workers(redis_url, prefix, 2)
    sim = subprocess.Popen(
        [sys.executable, "-m", "simulator_svc", "--json", "--conversations", "4", "--utterances", "8", "--rate", "2"],
        env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        keys = Keys(prefix)
        text = ""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            text, live, answered = _render_once(redis_url, keys)
            if live == 4 and answered > 0:
                break
            time.sleep(0.3)
        assert "consumer groups" in text and "lag" in text and "pending" in text
        assert text.count("sim-") >= 4
        assert re.search(r"transcriber\s+│\s+input\s+│\s+4", text), text
        assert "answered (last 60 s)" in text
    finally:
        out, _ = sim.communicate(timeout=60)
    assert json.loads(out.strip().splitlines()[-1])["missing"] == 0


def test_dead_letter_replay_is_answered_once(stack: Stack, redis_url: str, prefix: str) -> None:
    stack.start("transcriber_svc")
    stack.start("conversation_svc")
    wait_for_workers(redis_url, prefix, 2)
    keys = Keys(prefix)
    r = syncredis.Redis.from_url(redis_url)
    cid = "replay-conv"
    r.xadd(keys.control_for(cid), {"d": encode(ConversationStarted(conversation_id=cid))})
    bad = json.dumps({"type": "utterance.text", "conversation_id": cid, "utterance_id": "u1", "sent_ms": 1,
                      "text": "too long " * 1000})
    r.xadd(keys.input(cid), {"d": bad})
    deadline = time.monotonic() + 10
    while r.xlen(keys.dead(0)) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    dead_id = r.xrange(keys.dead(0))[0][0].decode()
    tool = [sys.executable, "-m", "simulator_svc"]
    listing = subprocess.run([*tool, "dead", "list"], env=stack.env, capture_output=True, text=True, check=True)
    assert dead_id in listing.stdout and "at most 8000 characters" in listing.stdout
    # Unfixed, the replay is refused: it would only die again.
    refused = subprocess.run([*tool, "dead", "replay", dead_id], env=stack.env, capture_output=True, text=True)
    assert refused.returncode == 1 and "still invalid" in refused.stderr
    fixed = encode(UtteranceText(conversation_id=cid, utterance_id="u1", text="a shorter one", sent_ms=1)).decode()
    ok = subprocess.run([*tool, "dead", "replay", dead_id, "--raw", fixed], env=stack.env, capture_output=True,
                        text=True)
    assert ok.returncode == 0, ok.stderr
    again = subprocess.run([*tool, "dead", "replay", dead_id, "--raw", fixed], env=stack.env, capture_output=True,
                           text=True)
    assert again.returncode == 1 and "no dead letter" in again.stderr
    deadline = time.monotonic() + 10
    dones: list[ResponseDone] = []
    while time.monotonic() < deadline:
        dones = [e for _, f in r.xrange(keys.responses(cid)) if isinstance(e := decode_fields(f), ResponseDone)]
        if dones:
            break
        time.sleep(0.05)
    time.sleep(1.0)
    dones = [e for _, f in r.xrange(keys.responses(cid)) if isinstance(e := decode_fields(f), ResponseDone)]
    assert [d.utterance_id for d in dones] == ["u1"]
    dialogue = subprocess.run([*tool, "dialogue", cid], env=stack.env, capture_output=True, text=True, check=True)
    assert "a shorter one" in dialogue.stdout and "I've received your transcription" in dialogue.stdout
    owners = subprocess.run([*tool, "owners"], env=stack.env, capture_output=True, text=True, check=True)
    assert cid in owners.stdout
    r.close()


def _compose() -> dict[str, object]:
    from ruamel.yaml import YAML

    return YAML(typ="safe").load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def test_compose_file_is_valid_against_the_compose_spec() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(ROOT / "docker-compose.yml")],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR:-default} / ${VAR} substitution."""
    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(3) or ""
        return env.get(name) or default
    return re.sub(r"\$\{([A-Z0-9_]+)(:-([^}]*))?\}", sub, value)


def _here(env: dict[str, str], acl: AclRedis) -> dict[str, str]:
    """A compose service's environment on this host: compose's ``redis`` host is the
    test's Redis, and /run/secrets (where compose mounts the secrets) the test's folder."""
    out = dict(env)
    out["REDIS_URL"] = out["REDIS_URL"].replace("@redis:6379/", f"@127.0.0.1:{acl.server.port}/")
    out["REDIS_PASSWORD_FILE"] = out["REDIS_PASSWORD_FILE"].replace("/run/secrets/", f"{acl.secrets}/")
    return out


def test_compose_services_run_as_written(prefix: str, tmp_path: Path) -> None:
    """Each compose service as written, against a Redis that runs the ACL users: each
    connects as its own user with the password of its own secret, and the dialogue runs."""
    compose = _compose()
    services = compose["services"]  # type: ignore[index]
    redis = services["redis"]  # type: ignore[index]
    assert redis["healthcheck"] and "--user health" in " ".join(redis["healthcheck"]["test"])
    assert "--appendonly" in redis["command"] and "ports" not in redis
    assert redis["entrypoint"] == ["sh", "/etc/redis/start.sh"] and "./deploy/redis:/etc/redis:ro" in redis["volumes"]
    assert sorted(redis["secrets"]) == sorted(f"redis_{user}" for user in USER_NAMES)
    assert {name: spec["file"] for name, spec in compose["secrets"].items()} == {  # type: ignore[index]
        **{f"redis_{user}": f"./deploy/secrets/redis_{user}" for user in USER_NAMES},
        GATEWAY_KEYS_FILE: f"./deploy/secrets/{GATEWAY_KEYS_FILE}"}
    # Only the front door is published.
    assert [name for name, svc in services.items() if "ports" in svc and not svc.get("profiles")] == [
        "gateway_svc"]
    # What a user would put in the shell before `docker compose up`:
    host_env = {"TRANSCRIBER_ENGINE": "simulated", "CONVERSATION_ENGINE": "echo", "KEY_PREFIX": prefix,
                "LEASE_S": "2"}
    acl = start_acl_redis(tmp_path / "redis", prefix)
    stack = Stack(base_env(acl.server.url, prefix), tmp_path / "logs")
    try:
        for name, user in (("transcriber_svc", "transcriber"), ("conversation_svc", "conversation")):
            svc = services[name]  # type: ignore[index]
            assert "container_name" not in svc and "ports" not in svc, "workers must scale"
            assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
            assert "/readyz" in " ".join(svc["healthcheck"]["test"])
            env = {k: _interpolate(str(v), host_env) for k, v in svc["environment"].items()}
            assert env["REDIS_URL"].startswith(f"redis://{user}@") and svc["secrets"] == [f"redis_{user}"]
            assert env["REDIS_PASSWORD_FILE"] == f"/run/secrets/redis_{user}"
            env = _here(env, acl)
            env["METRICS_PORT"] = "0"  # both listen on 9100 in their own containers; here they share a host
            stack.start(svc["command"][2], env)
        wait_for_workers(acl.server.url, prefix, 2)
        gateway = services["gateway_svc"]  # type: ignore[index]
        assert gateway["secrets"] == ["redis_gateway", GATEWAY_KEYS_FILE]
        keys_file = create_gateway_keys(tmp_path / "gateway-secrets")
        assert keys_file is not None
        env = {k: _interpolate(str(v), host_env) for k, v in gateway["environment"].items()}
        assert env["REDIS_URL"].startswith("redis://gateway@") and "GATEWAY_API_KEYS" not in env
        env = _here(env, acl)
        env["GATEWAY_API_KEYS_FILE"] = str(keys_file)
        port = free_port()
        env.update(GATEWAY_PORT=str(port), GATEWAY_HOST="127.0.0.1")
        gateway_proc = stack.start("gateway_svc", env)
        sim = services["simulator_svc"]  # type: ignore[index]
        assert sim["depends_on"]["gateway_svc"]["condition"] == "service_healthy"
        assert sim["secrets"] == [GATEWAY_KEYS_FILE] and "REDIS_URL" not in sim["environment"]
        env = {**stack.env, **{k: _interpolate(str(v), host_env) for k, v in sim["environment"].items()}}
        env["GATEWAY_CLIENT_KEY_FILE"] = str(keys_file)
        command = [sys.executable if c == "python" else c for c in sim["command"]]
        command = [f"http://127.0.0.1:{port}" if c == "http://gateway_svc:8080" else c for c in command]
        wait_http_ready(gateway_proc, f"http://127.0.0.1:{port}/readyz")
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert proc.stdout.count("Response complete") == 3 * 6
        operator = services["operator"]  # type: ignore[index]
        env = {**stack.env, **_here({k: _interpolate(str(v), host_env) for k, v in operator["environment"].items()},
                                    acl)}
        owners = subprocess.run([sys.executable, "-m", "simulator_svc", "dead", "list"], env=env,
                                capture_output=True, text=True, timeout=60, check=False)
        assert owners.returncode == 0 and "no dead letters" in owners.stdout, owners.stderr[-2000:]
        admin = syncredis.Redis.from_url(acl.server.url)
        try:
            assert admin.acl_log() == []  # nothing any of them sent was refused
        finally:
            admin.close()
    finally:
        stack.stop_all()
        acl.server.cleanup()
