"""Run the whole system on one machine without Docker: find or start a Redis,
start the two session services and the gateway as child processes, run the
simulator through the gateway, stop everything cleanly. Also the process
launcher the end-to-end tests use.

    python -m shared.devstack [--direct] [--serve] [simulator options...]

--direct   the simulator writes Redis itself instead of going through the gateway
--serve    after the dialogue, keep the stack running (the gateway's browser page) until Ctrl-C

Environment: REDIS_URL (else localhost:6379 if it answers, else an embedded
server), TRANSCRIBER_ENGINE / CONVERSATION_ENGINE, TRANSCRIBERS / CONVERSATIONS
(worker counts, default 1), GATEWAY_PORT (default 8080, else a free port),
GATEWAY_API_KEYS (unset: anonymous access on localhost; set: the simulator uses
GATEWAY_CLIENT_KEY, else the first of them), and every service variable of the README.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from shared.redis_server import RedisServer, free_port, ping, start_embedded

SERVICES = ("transcriber_svc", "conversation_svc")
GATEWAY = "gateway_svc"
DEFAULT_GATEWAY_PORT = 8080
#: Per-key limits of the local gateway unless set: every simulated conversation shares one key
#: (the anonymous one), so the API-like defaults (20 sessions, 100 events/s) would refuse a load run
#: such as ``--mode text --conversations 50 --rate 5``.
DEMO_GATEWAY_LIMITS = {"GATEWAY_MAX_SESSIONS_PER_KEY": "100000", "GATEWAY_EVENTS_PER_S": "1000000",
                       "GATEWAY_AUDIO_S_PER_MIN": "10000000"}
#: The devstack's own options (the rest go to the simulator).
DEVSTACK_OPTIONS = ("--direct", "--serve")
ROOT = Path(__file__).resolve().parents[1]


def deterministic_env(redis_url: str, prefix: str, **overrides: str) -> dict[str, str]:
    """The environment of service children for tests and benchmarks: this one
    without an API key, the deterministic engines (simulated, echo), JSON logs,
    and this checkout importable; ``overrides`` last."""
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env.update(
        REDIS_URL=redis_url,
        KEY_PREFIX=prefix,
        TRANSCRIBER_ENGINE="simulated",
        CONVERSATION_ENGINE="echo",
        LOG_FORMAT="json",
        PYTHONPATH=str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
    )
    env.update(overrides)
    return env


@dataclass
class ServiceProcess:
    module: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout_s: float) -> int | None:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def log_text(self) -> str:
        if not self.log_file.closed:
            self.log_file.flush()
        return self.log_path.read_text(errors="replace")


@dataclass
class Stack:
    """Child processes of the services, sharing one environment."""

    env: dict[str, str]
    log_dir: Path
    procs: list[ServiceProcess] = field(default_factory=list)

    def start(
        self, module: str, extra_env: dict[str, str] | None = None, args: list[str] | None = None
    ) -> ServiceProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        n = sum(1 for p in self.procs if p.module == module)
        log_path = self.log_dir / f"{module}-{n}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop_all
        env = {**self.env, **(extra_env or {})}
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *(args or [])],
            env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
        sp = ServiceProcess(module, proc, log_path, log_file)
        self.procs.append(sp)
        return sp

    def stop_all(self, timeout_s: float = 15.0) -> None:
        for p in self.procs:
            p.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for p in self.procs:
            if p.wait(max(0.1, deadline - time.monotonic())) is None:
                p.signal(signal.SIGKILL)
                p.wait(5)
            p.log_file.close()
        self.procs.clear()


def wait_ready(stack: Stack, redis_url: str, prefix: str, timeout_s: float = 120.0) -> None:
    """Wait for every started worker's heartbeat (engines load before it), or a dead worker."""
    import redis as syncredis
    from redis.cluster import RedisCluster

    client: Any = syncredis.Redis.from_url(redis_url)
    if int(client.info("cluster").get("cluster_enabled", 0)):
        client.close()
        client = RedisCluster.from_url(redis_url)  # heartbeats are on every master: scan them all
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            dead = [p for p in stack.procs if not p.alive()]
            if dead:
                raise SystemExit(f"[devstack] {dead[0].module} exited at start:\n{dead[0].log_text()[-3000:]}")
            workers = sum(1 for p in stack.procs if p.module in SERVICES)  # the gateway has no heartbeat
            if len(list(client.scan_iter(match=f"{prefix}:worker:*"))) >= workers:
                return
            time.sleep(0.1)
        raise SystemExit(f"[devstack] workers not up after {timeout_s:.0f}s; logs in {stack.log_dir}/")
    finally:
        client.close()


def resolve_redis(say: IO[str] = sys.stderr) -> tuple[str, RedisServer | None]:
    """REDIS_URL, else a Redis answering on localhost:6379, else an embedded one."""
    url = os.environ.get("REDIS_URL")
    if url:
        parts = urlsplit(url)
        say.write(f"[devstack] using REDIS_URL ({parts.hostname}:{parts.port or 6379})\n")
        return url, None
    if ping("127.0.0.1", 6379):
        say.write("[devstack] using the Redis answering on localhost:6379\n")
        return "redis://127.0.0.1:6379/0", None
    server = start_embedded()
    say.write(f"[devstack] started {server.origin} on port {server.port}\n")
    return server.url, server


def port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the gateway binds
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


@dataclass(frozen=True)
class GatewayPlan:
    env: dict[str, str]
    #: What a browser or the simulator on this machine opens.
    url: str
    anonymous: bool
    #: The key the simulator presents (None: none; with keys configured it then gets 401s).
    client_key: str | None


def plan_gateway(env: dict[str, str]) -> GatewayPlan:
    """The gateway's variables over ``env`` (host, port, access, the demo's limits) and how to
    reach it. Picks a free port when the wanted one is taken."""
    keys = env.get("GATEWAY_API_KEYS", "")
    anonymous = not keys.strip() and not env.get("GATEWAY_API_KEYS_FILE")
    # Anonymous access is for this machine only: not on every interface unless asked.
    host = env.get("GATEWAY_HOST") or ("127.0.0.1" if anonymous else "0.0.0.0")
    port = int(env.get("GATEWAY_PORT") or DEFAULT_GATEWAY_PORT)
    if port_taken(host, port):
        port = free_port()
    gw_env = {**DEMO_GATEWAY_LIMITS, **env, "GATEWAY_HOST": host, "GATEWAY_PORT": str(port)}
    if anonymous:
        gw_env["GATEWAY_ALLOW_ANONYMOUS"] = "true"
    shown = "localhost" if host in ("0.0.0.0", "::", "127.0.0.1") else host
    first = next((k.strip() for k in keys.split(",") if k.strip()), None)
    return GatewayPlan(gw_env, f"http://{shown}:{port}", anonymous,
                       None if anonymous else env.get("GATEWAY_CLIENT_KEY") or first)


def wait_http_ready(proc: ServiceProcess, url: str, timeout_s: float = 60.0) -> None:
    """Until ``url`` answers 200, or raise SystemExit with the process's log when it exits or never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise SystemExit(f"[devstack] {proc.module} exited at start:\n{proc.log_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"[devstack] {proc.module} not ready after {timeout_s:.0f}s; log: {proc.log_path}")


def start_gateway(stack: Stack, env: dict[str, str], timeout_s: float = 60.0) -> tuple[ServiceProcess, str]:
    """A gateway on a free loopback port with ``env`` (its keys, limits); returns it and its
    base URL once ``/readyz`` answers (raises SystemExit with its log when it never does)."""
    port = free_port()
    proc = stack.start(GATEWAY, {"GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port), **env})
    base = f"http://127.0.0.1:{port}"
    wait_http_ready(proc, base + "/readyz", timeout_s)
    return proc, base


def simulator_args(argv: list[str], gateway_url: str | None) -> list[str]:
    """The simulator's arguments: the full voice path (audio) unless a mode is given, through
    ``gateway_url`` unless None or the options name a gateway already."""
    args = argv if any(a == "--mode" or a.startswith("--mode=") for a in argv) else ["--mode", "audio", *argv]
    if gateway_url is not None and not any(a == "--gateway" or a.startswith("--gateway=") for a in args):
        args = ["--gateway", gateway_url, *args]
    return args


def serve_until_interrupted(stack: Stack, say: IO[str] = sys.stderr) -> None:
    """Keep the stack up until Ctrl-C (or SIGTERM), saying when a process dies meanwhile."""
    def stop(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    reported: set[int] = set()
    try:
        while True:
            for p in stack.procs:
                if not p.alive() and p.pid not in reported:
                    reported.add(p.pid)
                    say.write(f"[devstack] {p.module} exited; its log: {p.log_path}\n")
            time.sleep(1.0)
    except KeyboardInterrupt:
        say.write("\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    direct, serve = "--direct" in argv, "--serve" in argv
    argv = [a for a in argv if a not in DEVSTACK_OPTIONS]
    url, server = resolve_redis()
    env = {**os.environ, "REDIS_URL": url}
    # Each run gets its own key prefix unless told otherwise: a shared Redis stays tidy.
    env.setdefault("KEY_PREFIX", f"vab{os.getpid()}")
    stack = Stack(env, Path(os.environ.get("DEVSTACK_LOG_DIR", ".run/logs")))
    try:
        for module, count_var in (("transcriber_svc", "TRANSCRIBERS"), ("conversation_svc", "CONVERSATIONS")):
            for _ in range(int(env.get(count_var, "1"))):
                stack.start(module)
        gw = plan_gateway(env)
        gateway = stack.start(GATEWAY, gw.env)
        sys.stderr.write(f"[devstack] services started; logs in {stack.log_dir}/\n")
        wait_ready(stack, url, env["KEY_PREFIX"])
        wait_http_ready(gateway, gw.url + "/readyz")
        access = "anonymous access for this local demo" if gw.anonymous else "API keys required"
        sys.stderr.write(f"[devstack] gateway on {gw.url}/ (browser page; {access})\n")
        if not gw.anonymous and gw.client_key is None and not direct:
            sys.stderr.write("[devstack] set GATEWAY_CLIENT_KEY to one of the gateway's keys for the simulator\n")
        # The run command's default is the full voice path (speech synthesized, transcribed, answered)
        # through the front door, as any client of the API would talk to it.
        sim_env = env if gw.client_key is None else {**env, "GATEWAY_CLIENT_KEY": gw.client_key}
        sim_args = simulator_args(argv, None if direct else gw.url)
        sim = subprocess.run([sys.executable, "-m", "simulator_svc", *sim_args], env=sim_env, check=False)
        for p in stack.procs:
            if not p.alive():
                sys.stderr.write(f"[devstack] {p.module} exited early; its log:\n{p.log_text()[-3000:]}\n")
        if serve:
            sys.stderr.write(f"[devstack] serving: open {gw.url}/ ; Ctrl-C stops everything\n")
            serve_until_interrupted(stack)
        return sim.returncode
    finally:
        stack.stop_all()
        if server is not None:
            server.cleanup()
        sys.stderr.write("[devstack] stopped\n")


if __name__ == "__main__":
    sys.exit(main())
