"""One node of the local Redis Cluster (``shared.redis_cluster``): a server process on
a loopback port, with its own cluster-bus port and folder (``nodes.conf``, data,
``node.log``), and a plain client of it alone. Starting and killing the process is
here; what the node is to the cluster (its role, its slots) is the cluster's to ask."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from shared.redis_cluster_view import NodeEntry, parse_nodes
from shared.redis_server import ping

HOST = "127.0.0.1"
#: How often a wait asks again.
POLL_S = 0.05


class ClusterError(RuntimeError):
    """The cluster (or a node of it) did not start or settle; the message says what was
    last wrong and ends with the tail of the nodes' logs."""


@dataclass(eq=False)  # compared and hashed by identity: a node is one process slot
class Node:
    port: int
    bus_port: int
    dir: Path
    node_id: str = ""
    proc: subprocess.Popen[bytes] | None = None
    _client: redis.Redis | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}"

    @property
    def log(self) -> Path:
        return self.dir / "node.log"

    def client(self) -> redis.Redis:
        """A plain (not cluster) client of this node alone, decoding replies."""
        if self._client is None:
            self._client = redis.Redis(host=HOST, port=self.port, decode_responses=True,
                                       socket_timeout=5.0, socket_connect_timeout=2.0)
        return self._client

    def command(self, *args: str | int) -> Any:
        """One command, its reply as the server gave it: a command given as words apart
        (``"CLUSTER", "NODES"``) gets none of the client's reply parsers, which are
        registered under the joined name (``"CLUSTER NODES"``)."""
        return self.client().execute_command(*args)  # type: ignore[no-untyped-call]

    def view(self) -> dict[str, NodeEntry]:
        """This node's ``CLUSTER NODES``, by node id."""
        return parse_nodes(str(self.command("CLUSTER", "NODES")))

    def launch(self, args: list[str]) -> subprocess.Popen[bytes]:
        """Start the process (``args`` name this node's ports and folder). Its stdout and
        stderr both go to ``node.log``: a refused option is printed before any log opens."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        return self.proc

    def await_answer(self, deadline: float) -> None:
        """Until the node answers PING; ``ClusterError`` with its log if it exits first."""
        while time.monotonic() < deadline:
            if not self.alive:
                raise ClusterError(f"{self} exited at start; its log ends:\n{self.log_tail()}")
            if ping(HOST, self.port):
                return
            time.sleep(POLL_S)
        raise ClusterError(f"{self} did not answer in time; its log ends:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL, as a crash (no shutdown, no last save), and reap the process."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __str__(self) -> str:
        return f"node :{self.port} ({self.node_id[:8] or 'no id yet'})"
