"""Redis ACL users as data, and their rendering as ACL file lines (pure).

A user is a list of grants: each grant is some commands on some key patterns,
each pattern readable (``%R~``), writable (``%W~``) or both (``~``). Redis
allows a command when one grant covers the command and every key it names, so
each grant becomes one ACL *selector* (``(+xadd %W~...)``); the first, the
connection's key-less commands, is the user's root rules. A product of
commands and keys is exactly what a grant means: "transcriber may XADD to
transcripts streams" without "transcriber may XADD to input streams".

Scripts: EVAL/EVALSHA declare their KEYS as read and written (Redis cannot
tell what a script does with them), so a grant that runs a program needs ``~``
on every key the program is given; each ``redis.call`` inside is then checked
on its own, against the same grants, when the script runs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

Access = Literal["R", "W", "RW"]

#: How each access is written before a key pattern.
_ACCESS_PREFIX: dict[str, str] = {"R": "%R~", "W": "%W~", "RW": "~"}
#: A command or ``command|subcommand``, as ACL rules name them.
_COMMAND = re.compile(r"^[a-z][a-z-]*(\|[a-z][a-z-]*)?$")
_USER = re.compile(r"^[a-z][a-z0-9_-]*$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class KeyRule:
    pattern: str
    access: Access

    def render(self) -> str:
        if " " in self.pattern or not self.pattern:
            raise ValueError(f"bad key pattern {self.pattern!r}")
        return _ACCESS_PREFIX[self.access] + self.pattern


def read(*patterns: str) -> tuple[KeyRule, ...]:
    return tuple(KeyRule(p, "R") for p in patterns)


def write(*patterns: str) -> tuple[KeyRule, ...]:
    return tuple(KeyRule(p, "W") for p in patterns)


def read_write(*patterns: str) -> tuple[KeyRule, ...]:
    return tuple(KeyRule(p, "RW") for p in patterns)


@dataclass(frozen=True, slots=True)
class Grant:
    """``commands`` on ``keys``; ``why`` says which code needs it (for a reviewer)."""

    why: str
    commands: tuple[str, ...]
    keys: tuple[KeyRule, ...] = ()

    def rules(self) -> list[str]:
        bad = [c for c in self.commands if not _COMMAND.match(c)]
        if bad or not self.commands:
            raise ValueError(f"grant {self.why!r}: bad commands {bad or '(none)'}")
        return [f"+{c}" for c in self.commands] + [k.render() for k in self.keys]


@dataclass(frozen=True, slots=True)
class User:
    name: str
    why: str
    #: The first grant is the root rules (keep it key-less: connection commands);
    #: every other one is a selector of its own.
    grants: tuple[Grant, ...]

    def commands(self) -> set[str]:
        return {c for g in self.grants for c in g.commands}


def password_sha256(password: str) -> str:
    """What an ACL file holds instead of a password (``#<sha256 hex>``)."""
    return hashlib.sha256(password.encode()).hexdigest()


def user_line(user: User, password_hash: str) -> str:
    """One ``user`` line: enabled, with one password hash, no channels, nothing but its grants.
    ``password_hash`` is a sha256 in hex (or a template's placeholder for one)."""
    if not _USER.match(user.name):
        raise ValueError(f"bad user name {user.name!r}")
    if not user.grants or user.grants[0].keys:
        raise ValueError(f"user {user.name}: the first grant is the root rules and names no keys")
    root, *selectors = user.grants
    parts = ["user", user.name, "on", f"#{password_hash}", "resetkeys", "resetchannels", "-@all", *root.rules()]
    parts += ["(" + " ".join(grant.rules()) + ")" for grant in selectors]
    return " ".join(parts)


#: The ``default`` user (what an unauthenticated connection is): disabled, allowed nothing.
DEFAULT_USER_LINE = "user default off resetkeys resetchannels -@all"


def acl_file(users: Iterable[User], password_hashes: Mapping[str, str]) -> str:
    """The whole ACL file: the default user disabled, then one line per user."""
    lines = [DEFAULT_USER_LINE]
    for user in users:
        if user.name == "default":
            raise ValueError("the default user stays disabled")
        lines.append(user_line(user, password_hashes[user.name]))
    return "\n".join(lines) + "\n"
