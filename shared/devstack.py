"""Run the whole system on one machine without Docker: find or start a Redis,
start the two session services as child processes, run the simulator, stop
everything cleanly. Also the process launcher the end-to-end tests use.

    python -m shared.devstack [simulator options...]

Environment: REDIS_URL (else localhost:6379 if it answers, else an embedded
server), TRANSCRIBER_ENGINE / CONVERSATION_ENGINE, TRANSCRIBERS / CONVERSATIONS
(worker counts, default 1), and every service variable of the README.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from shared.redis_server import RedisServer, ping, start_embedded

SERVICES = ("transcriber_svc", "conversation_svc")
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

    client = syncredis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            dead = [p for p in stack.procs if not p.alive()]
            if dead:
                raise SystemExit(f"[devstack] {dead[0].module} exited at start:\n{dead[0].log_text()[-3000:]}")
            if len(list(client.scan_iter(match=f"{prefix}:worker:*"))) >= len(stack.procs):
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    url, server = resolve_redis()
    env = {**os.environ, "REDIS_URL": url}
    # Each run gets its own key prefix unless told otherwise: a shared Redis stays tidy.
    env.setdefault("KEY_PREFIX", f"vab{os.getpid()}")
    stack = Stack(env, Path(os.environ.get("DEVSTACK_LOG_DIR", ".run/logs")))
    try:
        for module, count_var in (("transcriber_svc", "TRANSCRIBERS"), ("conversation_svc", "CONVERSATIONS")):
            for _ in range(int(env.get(count_var, "1"))):
                stack.start(module)
        sys.stderr.write(f"[devstack] services started; logs in {stack.log_dir}/\n")
        # The run command's default is the full voice path: speech synthesized, transcribed, answered.
        sim_args = argv if any(a == "--mode" or a.startswith("--mode=") for a in argv) else ["--mode", "audio", *argv]
        wait_ready(stack, url, env["KEY_PREFIX"])
        sim = subprocess.run([sys.executable, "-m", "simulator_svc", *sim_args], env=env, check=False)
        for p in stack.procs:
            if not p.alive():
                sys.stderr.write(f"[devstack] {p.module} exited early; its log:\n{p.log_text()[-3000:]}\n")
        return sim.returncode
    finally:
        stack.stop_all()
        if server is not None:
            server.cleanup()
        sys.stderr.write("[devstack] stopped\n")


if __name__ == "__main__":
    sys.exit(main())
