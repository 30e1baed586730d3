"""A Redis of the test's own that runs with the services' ACL users (``shared.acl``),
rendered for the test's key prefix, each user with a random password in a file
(as compose gives it), plus one admin user for the test itself."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from shared.acl.deploy import render, secret_path
from shared.acl.users import USER_NAMES
from shared.bus.resp import connect, connect_to
from shared.redis_server import RedisServer, TlsFiles, find_server_binary
from shared.settings import ConnectionSettings

#: The test's own user: everything (it sets up, inspects, and revokes).
ADMIN = "testadmin"


@dataclass
class AclRedis:
    server: RedisServer
    prefix: str
    passwords: dict[str, str]
    #: Where each user's password file is (``redis_<user>``, as compose's secrets).
    secrets: Path
    aclfile: Path

    def settings(self, user: str, **extra: Any) -> dict[str, Any]:
        """Settings fields that connect as ``user``: its URL and its password file."""
        return {"redis_url": self.server.url_as(user), "redis_password_file": secret_path(self.secrets, user),
                "key_prefix": self.prefix, **extra}

    def client(self, user: str, **extra: Any) -> aioredis.Redis:
        return connect_to(ConnectionSettings(**self.settings(user, **extra)))

    def admin(self) -> aioredis.Redis:
        return connect(self.server.url)


def start_acl_redis(folder: Path, prefix: str, tls: TlsFiles | None = None) -> AclRedis:
    folder.mkdir(parents=True, exist_ok=True)
    passwords = {user: secrets.token_hex(16) for user in USER_NAMES}
    admin_password = secrets.token_hex(16)
    secrets_dir = folder / "secrets"
    secrets_dir.mkdir()
    for user, password in passwords.items():
        secret_path(secrets_dir, user).write_text(password + "\n")  # a trailing newline, as `echo` writes
    aclfile = folder / "users.acl"
    aclfile.write_text(render(prefix, passwords) + f"user {ADMIN} on >{admin_password} ~* &* +@all\n")
    binary, origin = find_server_binary()
    server = RedisServer(binary, origin, data_dir=folder / "data", appendonly=False, username=ADMIN,
                         password=admin_password, aclfile=aclfile, tls=tls)
    server.data_dir.mkdir()
    return AclRedis(server.start(), prefix, passwords, secrets_dir, aclfile)
