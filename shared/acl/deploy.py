"""The ACL users as files: the compose template, a rendered ACL file, the password secrets.

- ``template()`` is ``deploy/redis/users.acl``: the users with ``@KEY_PREFIX@`` for
  the prefix and ``@PASSWORD_SHA256:<user>@`` for each password's hash. Compose's
  Redis fills both in at start (``deploy/redis/start.sh``, from ``KEY_PREFIX`` and
  the secrets), so the rendered file holds hashes only, in a tmpfs.
- ``render(prefix, passwords)`` is the same file filled in here (tests; a Redis run
  without compose).
- ``create_secrets(directory)`` makes the missing ``redis_<user>`` password files.

A password file's password is its content without trailing newlines (what the
shell's ``$(cat file)`` gives, so ``start.sh`` hashes the same password).

Standard library only (and ``shared.keys``): ``python3 -m shared.acl secrets``
runs before any virtual environment exists.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path

from shared.acl.rules import acl_file, password_sha256
from shared.acl.users import USER_NAMES, service_users
from shared.keys import KEY_PREFIX_PATTERN, KeyPatterns

#: Where the template's key prefix goes.
PREFIX_PLACEHOLDER = "@KEY_PREFIX@"
#: Each password file, in deploy/secrets/ and as compose names its secret (/run/secrets/<name>).
SECRET_NAME = "redis_{user}"
#: Bytes of randomness of a generated password (hex: twice as many characters).
PASSWORD_BYTES = 32


def hash_placeholder(user: str) -> str:
    return f"@PASSWORD_SHA256:{user}@"


def template() -> str:
    """``deploy/redis/users.acl``: every user, prefix and password hashes left as placeholders."""
    users = service_users(KeyPatterns(PREFIX_PLACEHOLDER))
    return acl_file(users, {u.name: hash_placeholder(u.name) for u in users})


def check_prefix(prefix: str) -> str:
    if not re.fullmatch(KEY_PREFIX_PATTERN, prefix):
        raise ValueError(f"KEY_PREFIX must match {KEY_PREFIX_PATTERN}")
    return prefix


def render(prefix: str, passwords: Mapping[str, str]) -> str:
    """The ACL file for ``prefix``, each user's password (``passwords[user]``) as its sha256."""
    users = service_users(KeyPatterns(check_prefix(prefix)))
    missing = [u.name for u in users if not passwords.get(u.name)]
    if missing:
        raise ValueError(f"no password for {', '.join(missing)}")
    return acl_file(users, {u.name: password_sha256(passwords[u.name]) for u in users})


def read_password_file(path: Path | str) -> str:
    """A password file's password (its content without trailing newlines); never empty."""
    password = Path(path).read_text(encoding="utf-8").rstrip("\n")
    if not password:
        raise ValueError(f"{path} holds no password")
    return password


def secret_path(directory: Path, user: str) -> Path:
    return directory / SECRET_NAME.format(user=user)


def read_secrets(directory: Path) -> dict[str, str]:
    """Every user's password from ``directory`` (``redis_<user>`` files)."""
    return {user: read_password_file(secret_path(directory, user)) for user in USER_NAMES}


def create_secrets(directory: Path) -> list[Path]:
    """Write a random password for each user that has no file yet; return the new files.

    The folder is the owner's alone (0700); the files are 0644 because compose
    bind-mounts them as they are, and the containers' users (redis, the app's
    uid) are not the host's: the folder is what keeps other host users out."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    created = []
    for user in USER_NAMES:
        path = secret_path(directory, user)
        if path.exists():
            continue
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(secrets.token_hex(PASSWORD_BYTES))
        path.chmod(0o644)  # whatever the umask
        created.append(path)
    return created


#: The gateway's API keys file (GATEWAY_API_KEYS_FILE) that compose mounts as a secret.
GATEWAY_KEYS_FILE = "gateway_api_keys"


def create_gateway_keys(directory: Path) -> Path | None:
    """Write one random API key for the gateway (clients use it) when there is no
    keys file yet; return the new file. More keys: one per line, added by hand."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / GATEWAY_KEYS_FILE
    if path.exists():
        return None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(f"sk-vab-{secrets.token_hex(PASSWORD_BYTES)}\n")
    path.chmod(0o644)
    return path

