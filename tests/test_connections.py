"""Every Redis connection has a socket timeout and TCP keepalive, and the retry
policy tells the errors worth waiting out from the ones that need another path."""

from __future__ import annotations

import socket

import pytest
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.bus.resp import SOCKET_TIMEOUT_S, RawConnection, connect
from shared.bus.retry import failure_reason, is_transient


async def test_connections_have_a_timeout_and_tcp_keepalive(redis_url: str) -> None:
    client = connect(redis_url)
    raw = RawConnection(client)
    try:
        assert await client.ping()
        await raw.roundtrip(b"*1\r\n$4\r\nPING\r\n", 1)
        for conn in (raw._conn, client.connection_pool.get_available_connection()):
            assert conn.socket_timeout == SOCKET_TIMEOUT_S
            sock = conn._writer.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            if hasattr(socket, "TCP_KEEPIDLE"):
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
    finally:
        await raw.aclose()
        await client.aclose()


@pytest.mark.parametrize("reply", [
    "LOADING Redis is loading the dataset in memory",
    "OOM command not allowed when used memory > 'maxmemory'.",
    "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
    "READONLY You can't write against a read only replica.",
    "BUSY Redis is busy running a script.",
    "TRYAGAIN Multiple keys request during rehashing of slot",
    "CLUSTERDOWN The cluster is down",
])
def test_replies_of_a_redis_that_cannot_serve_for_now_are_transient(reply: str) -> None:
    # As redis-py's parser raises them: most get a class of their own and lose their code.
    assert is_transient(BaseParser.parse_error(reply))


@pytest.mark.parametrize("reply", [
    "WRONGTYPE Operation against a key holding the wrong kind of value",
    "BUSYGROUP Consumer Group name already exists",
    "ERR unknown command",
])
def test_replies_that_waiting_cannot_fix_are_not(reply: str) -> None:
    assert not is_transient(BaseParser.parse_error(reply))


def test_an_acl_refusal_is_waited_out_and_named() -> None:
    """NOPERM: the ACL does not match the code; nothing ran, an operator's ACL LOAD fixes
    it, so the work waits for that (test_redis_acl.py has it against a real Redis)."""
    exc = BaseParser.parse_error("NOPERM this user has no permissions to run the 'xadd' command")
    assert is_transient(exc)
    assert failure_reason(exc) == ("redis refuses this user "
                                   "(NOPERM: this user has no permissions to run the 'xadd' command)")
    assert failure_reason(RedisConnectionError("Connection closed by server.")) == "redis unreachable"
    oom = BaseParser.parse_error("OOM command not allowed")
    assert failure_reason(oom) == "redis refuses writes (OutOfMemoryError)"


def test_a_lost_connection_is_transient() -> None:
    assert is_transient(RedisConnectionError("Connection closed by server."))
