"""Who may do what in Redis: one ACL user per service, from reading the code.

Each grant names the code that needs it. The commands are every one the code
sends: redis-py calls, the raw ``pack_command`` reads, and each ``redis.call``
of the Lua programs (``shared/bus/lua/batch.lua``: XADD, XACK, TYPE, EXPIRE;
``refresh.lua``: XPENDING, XCLAIM; the operator's replay: XDEL, XADD). Key
patterns come from ``KeyPatterns``, so a different ``KEY_PREFIX`` gives the
same users over its own keys and nothing else.

A worker's batch program is one EVALSHA per partition whose KEYS are every key
of that flush (its sources, effects, dead letters, bells, expiries): the
``programs`` grant names them all, read and write, as EVALSHA requires; what the
program then does to each is checked against the narrower grants.

Tests: tests/test_acl.py (this table, rendered) and tests/test_redis_acl.py (a
real pipeline, each service as its user, and what each is refused).
"""

from __future__ import annotations

from shared.acl.rules import Grant, User, read, read_write, write
from shared.keys import KeyPatterns

#: Connection set-up (HELLO: redis-py's RESP3 handshake) and liveness; on Redis Cluster the
#: slot map (CLUSTER SLOTS), the command table (COMMAND: redis-py's cluster client reads it at
#: start, to find each command's keys), ASK redirections (ASKING); the durability setting's
#: WAIT; and INFO cluster, by which every process tells a cluster from one Redis
#: (REDIS_CLUSTER=auto).
CONNECT = ("ping", "hello", "client|setname", "cluster|slots", "command", "asking", "wait", "info")


def _run_id() -> Grant:
    """Workers notice a restarted Redis by its run id (shared/bus/resp.server_run_id), and then
    resume their conversations from what it kept (runtime/reading)."""
    return Grant("the server's run id (INFO server): a restarted Redis is resumed from", ("info",))


def _connect(*extra: str) -> Grant:
    return Grant("connection set-up and liveness" + (", script loading" if extra else ""), CONNECT + extra)


def _claims(k: KeyPatterns) -> Grant:
    return Grant(
        "ownership: the control streams, read through the service's group (runtime/reading: XREADGROUP; "
        "runtime/leases: claim, refresh via refresh.lua, reap, hand back; runtime/maintenance: trim, lag)",
        ("xreadgroup", "xack", "xclaim", "xautoclaim", "xpending", "xgroup|create", "xinfo|groups", "xtrim", "xlen"),
        read_write(k.control()),
    )


def _heartbeat(k: KeyPatterns, service: str) -> tuple[Grant, ...]:
    return (
        Grant("its heartbeat hash (runtime/maintenance; deleted at shutdown)", ("hset", "expire", "del"),
              write(k.worker(service))),
        Grant("its service's worker registry: its own entry, and the peers' (runtime/maintenance, "
              "runtime/balancer: rebalancing reads the peers' heartbeats, drops stale entries)",
              ("zadd", "zrem", "expire", "zrangebyscore", "zremrangebyscore"), read_write(k.workers(service))),
        Grant("the peers' heartbeats (runtime/balancer: their load, for rebalancing)", ("hgetall",),
              read(k.worker(service))),
    )


def _own_stream(k: KeyPatterns, kind: str, *extra: str) -> Grant:
    """The stream a worker consumes through its group: group reads, takeover and stuck
    claims (XPENDING, XCLAIM), the gate's acks, its group's creation and lag, a wrong-type
    check (TYPE), and its expiry when the conversation ends."""
    return Grant(
        f"its own {kind} streams, consumed through its group (runtime/reading, runtime/leases, the gate)",
        ("xreadgroup", "xack", "xclaim", "xpending", "xgroup|create", "xinfo|groups", "type", "expire", *extra),
        read_write(k.stream(kind)),
    )


def transcriber(k: KeyPatterns) -> User:
    return User("transcriber", "transcriber_svc: input streams in, transcripts out", (
        _connect("script|load"),
        _run_id(),
        _claims(k),
        # XADD: the relay of a control-stream conversation.ended into the input stream (leases._relay_ended).
        _own_stream(k, "input", "xadd"),
        Grant("its effects: transcripts, and dead letters (gated; the gate TYPE-checks its target)",
              ("xadd", "type"), write(k.stream("transcripts"), k.dead())),
        Grant("the bells it waits on (bus/doorbell)", ("xread", "xrevrange"),
              read(k.bell("input"), k.bell("control"))),
        Grant("the bells its flushes ring (transcripts; input for a relayed end)", ("xadd",),
              write(k.bell("transcripts"), k.bell("input"))),
        *_heartbeat(k, "transcriber"),
        Grant("its Lua programs (batch.lua, refresh.lua), given every key of a flush", ("evalsha",),
              read_write(k.control(), k.stream("input"), k.stream("transcripts"), k.dead(),
                         k.bell("transcripts"), k.bell("input"))),
    ))


def conversation(k: KeyPatterns) -> User:
    return User("conversation", "conversation_svc: transcripts in, responses out", (
        _connect("script|load"),
        _run_id(),
        _claims(k),
        # XREVRANGE: the turn history rebuilt after a takeover (conversation_svc/worker.py).
        _own_stream(k, "transcripts", "xrevrange"),
        Grant("its answers: written (gated), read back for the history, expired at the end",
              ("xadd", "type", "xrevrange", "expire"), read_write(k.stream("responses"))),
        Grant("dead letters (gated; the gate TYPE-checks its target)", ("xadd", "type"), write(k.dead())),
        Grant("the monitor's timings (conversation_svc/worker.py StatsBuffer)", ("xadd",), write(k.stats())),
        # Leases.finish expires all three of a conversation's streams; the input stream is
        # never written by this user.
        Grant("the input stream's expiry when the conversation ends", ("expire",), write(k.stream("input"))),
        Grant("the bells it waits on (bus/doorbell)", ("xread", "xrevrange"),
              read(k.bell("transcripts"), k.bell("control"))),
        Grant("the bell its flushes ring", ("xadd",), write(k.bell("responses"))),
        *_heartbeat(k, "conversation"),
        Grant("its Lua programs (batch.lua, refresh.lua), given every key of a flush", ("evalsha",),
              read_write(k.control(), k.stream("transcripts"), k.stream("responses"), k.stream("input"),
                         k.dead(), k.stats(), k.bell("responses"))),
    ))


def _client_writes(k: KeyPatterns) -> Grant:
    return Grant("starts conversations and writes utterances and ends, then rings (bus/doorbell add_with_rings)",
                 ("xadd",), write(k.control(), k.stream("input"), k.bell("control"), k.bell("input")))


def gateway(k: KeyPatterns) -> User:
    """The front door (gateway_svc): a client, plus small state of its own."""
    return User("gateway", "the public front door: a client with its own hashes and sorted sets", (
        _connect("script|load"),
        _client_writes(k),
        Grant("follows transcripts and answers (shared/follow.py: bells, then the streams that rang)",
              ("xread", "xrange", "xrevrange"),
              read(k.stream("transcripts"), k.stream("responses"), k.bell("transcripts"), k.bell("responses"))),
        Grant("its own state (gateway_svc): the resume hash of each conversation (resume.py) and each "
              "key's session slots, a sorted set kept by two scripts (quotas.SessionSlots)",
              ("hset", "hgetall", "expire", "del", "zadd", "zrem", "zcard", "zscore", "zremrangebyscore",
               "pexpire", "evalsha", "eval"),
              read_write(k.gateway())),
    ))


def simulator(k: KeyPatterns) -> User:
    return User("simulator", "simulator_svc's simulated client", (
        _connect(),
        _client_writes(k),
        Grant("follows transcripts and answers (shared/follow.py: XREAD; Doorbell.start: XREVRANGE)",
              ("xread", "xrevrange"),
              read(k.stream("transcripts"), k.stream("responses"), k.bell("transcripts"), k.bell("responses"))),
    ))


def operator(k: KeyPatterns) -> User:
    return User("operator", "the operator's tools: monitor, owners, dialogue, dead list and replay", (
        _connect(),
        Grant("reads everything under the prefix (simulator_svc/observe.py, admin.py; SCAN names no key)",
              ("scan", "hgetall", "xrange", "xrevrange", "xpending", "xinfo|groups", "xlen"),
              read(k.everything())),
        # A dead letter's stream is where its entry came from: a control stream, or the
        # stream a worker consumes (input, transcripts).
        Grant("dead replay's script (admin.REPLAY_SCRIPT), given the dead stream and the entry's stream",
              ("eval",), read_write(k.dead(), k.control(), k.stream("input"), k.stream("transcripts"))),
        Grant("dead replay: the letter deleted", ("xdel",), write(k.dead())),
        Grant("dead replay: the entry re-added, and its bell rung", ("xadd",),
              write(k.control(), k.stream("input"), k.stream("transcripts"),
                    k.bell("control"), k.bell("input"), k.bell("transcripts"))),
    ))


def health(k: KeyPatterns) -> User:
    return User("health", "compose's Redis healthcheck (redis-cli ping)", (Grant("liveness", ("ping",)),))


def service_users(k: KeyPatterns) -> list[User]:
    """Every user, in the ACL file's order."""
    return [transcriber(k), conversation(k), gateway(k), simulator(k), operator(k), health(k)]


#: Every user's name (the same for any prefix).
USER_NAMES = tuple(user.name for user in service_users(KeyPatterns()))
