"""When is the local Redis Cluster settled? Checks that ask the live nodes and return
what is still wrong (a sentence for the timeout's message) or None: the harness
(``shared.redis_cluster``) polls them after a start, a failover, a kill, a restart.

Nodes learn of each other by gossip, so right after a change each node tells its own
story for a while; a test may go on only once they all tell the same one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.redis_cluster_node import Node
from shared.redis_cluster_view import SLOTS, NodeEntry, SlotRange, parse_info, slot_owners

#: A node's story in short: by node id, (master?, its master's id, its slots).
Roles = dict[str, tuple[bool, str | None, tuple[SlotRange, ...]]]
#: A ``CLUSTER SLOTS`` table in short: (first, last, master id, sorted replica ids).
SlotTable = list[tuple[int, int, str, list[str]]]


def strangers(nodes: Sequence[Node]) -> str | None:
    """Whether every node knows every other (the MEETs got through)."""
    ids = {n.node_id for n in nodes}
    for node in nodes:
        missing = ids - node.view().keys()
        if missing:
            return f"{node} does not know {len(missing)} node(s) yet"
    return None


def not_served_by(live: Sequence[Node], slots: tuple[SlotRange, ...], candidates: set[str]) -> str | None:
    """Whether every live node says one and the same of ``candidates`` serves all of
    ``slots`` (as these exact ranges: the harness never splits a master's ranges)."""
    for node in live:
        owners = slot_owners(node.view())
        served_by = {owners.get(r) for r in slots}
        if len(served_by) != 1 or not served_by <= candidates:
            names = sorted(o[:8] if o else "nobody" for o in served_by)
            return f"{node} sees slots {slots[0][0]}.. served by {', '.join(names)}"
    return None


def unsettled(live: Sequence[Node]) -> str | None:
    """What keeps the cluster of these live nodes from being settled (the module
    docstring of ``shared.redis_cluster`` lists the conditions), or None."""
    live_ids = {n.node_id for n in live}
    reference: Roles | None = None
    for node in live:
        info = parse_info(str(node.command("CLUSTER", "INFO")))
        if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
            return f"{node}: cluster_state {info.get('cluster_state')}, slots ok {info.get('cluster_slots_ok')}"
        view = node.view()
        problem = _view_problem(view, live_ids)
        if problem:
            return f"{node} {problem}"
        roles = {i: (view[i].is_master, view[i].master_id, view[i].slots) for i in live_ids}
        if reference is None:
            reference = roles
        elif roles != reference:
            return f"{node} sees other roles or slots than {live[0]}"
    if reference is None:
        return "no node is alive"
    expected = _slot_table(reference)
    for node in live:
        if _cluster_slots(node) != expected:
            return f"{node}: its CLUSTER SLOTS does not list every master with its replicas yet"
        if reference[node.node_id][1] is not None:
            link = node.client().info("replication").get("master_link_status")
            if link != "up":
                return f"{node}: master_link_status {link}"
    return None


def _view_problem(view: dict[str, NodeEntry], live_ids: set[str]) -> str | None:
    if not live_ids <= view.keys():
        return "does not know every live node yet"
    failing = sorted(i[:8] for i in live_ids if view[i].failing)
    if failing:
        return f"sees {', '.join(failing)} as failing"
    owners = slot_owners(view)
    if sum(last - first + 1 for first, last in owners) != SLOTS or not set(owners.values()) <= live_ids:
        return "sees slots unserved or served by a dead node"
    return None


def _slot_table(roles: Roles) -> SlotTable:
    """The ``CLUSTER SLOTS`` that the settled ``roles`` of the live nodes make."""
    replicas: dict[str, list[str]] = {}
    for node_id, (_, master_id, _) in roles.items():
        if master_id is not None:
            replicas.setdefault(master_id, []).append(node_id)
    return sorted((first, last, node_id, sorted(replicas.get(node_id, [])))
                  for node_id, (is_master, _, slots) in roles.items() if is_master for first, last in slots)


def _cluster_slots(node: Node) -> SlotTable:
    # Each row: first slot, last slot, then [ip, port, id, ...] of the master and of
    # each replica the node counts as available (synced: a replication offset not 0).
    rows: list[list[Any]] = node.command("CLUSTER", "SLOTS")
    return sorted((int(row[0]), int(row[1]), str(row[2][2]), sorted(str(r[2]) for r in row[3:])) for row in rows)

