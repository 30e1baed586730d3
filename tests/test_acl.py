"""The ACL users as data (shared/acl), without a Redis: the committed compose
template is what the generator writes, a key prefix changes every pattern and
nothing else, the patterns match the names ``Keys`` builds (Redis's glob: ``*``,
and braces as plain characters, as ``fnmatchcase`` reads them with no ``[``), and
the password files. test_redis_acl.py loads them into a real Redis."""

from __future__ import annotations

import hashlib
import re
import stat
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

from shared.acl.__main__ import main as acl_main
from shared.acl.deploy import (
    GATEWAY_KEYS_FILE,
    PREFIX_PLACEHOLDER,
    create_secrets,
    hash_placeholder,
    read_password_file,
    read_secrets,
    render,
    template,
)
from shared.acl.rules import DEFAULT_USER_LINE, Grant, User, password_sha256, read, user_line
from shared.acl.users import USER_NAMES, service_users
from shared.keys import KeyPatterns, Keys

ROOT = Path(__file__).resolve().parents[1]
PASSWORDS = {user: f"pw-{user}" for user in USER_NAMES}


def test_the_committed_template_is_what_the_generator_writes() -> None:
    committed = (ROOT / "deploy" / "redis" / "users.acl").read_text()
    assert committed == template(), "regenerate it: python -m shared.acl template > deploy/redis/users.acl"


def test_the_template_has_a_placeholder_for_the_prefix_and_each_password() -> None:
    text = template()
    for user in USER_NAMES:
        assert f"user {user} on #{hash_placeholder(user)} " in text
    assert re.findall(r"~([^ )]+)", text) and all(
        p.startswith(PREFIX_PLACEHOLDER + ":") for p in re.findall(r"~([^ )]+)", text))


def test_a_prefix_changes_every_key_pattern_and_nothing_else() -> None:
    ours, theirs = render("vab", PASSWORDS), render("other.prefix-2", PASSWORDS)
    assert theirs == ours.replace("vab:", "other.prefix-2:")
    patterns = re.findall(r"~([^ )]+)", theirs)
    assert patterns and all(p.startswith("other.prefix-2:") for p in patterns)
    assert "vab:" not in theirs and PREFIX_PLACEHOLDER not in theirs and "@PASSWORD_SHA256" not in theirs


def test_each_user_has_its_password_hash_and_the_default_user_is_off() -> None:
    lines = render("vab", PASSWORDS).splitlines()
    assert lines[0] == DEFAULT_USER_LINE == "user default off resetkeys resetchannels -@all"
    by_user = {line.split()[1]: line for line in lines[1:]}
    assert list(by_user) == list(USER_NAMES)
    for user, line in by_user.items():
        assert line.startswith(f"user {user} on #{password_sha256(PASSWORDS[user])} resetkeys resetchannels -@all ")
        assert password_sha256(PASSWORDS[user]) == hashlib.sha256(PASSWORDS[user].encode()).hexdigest()
        assert "+@" not in line and "allkeys" not in line and " ~* " not in line and "&" not in line


@pytest.mark.parametrize("bad", [{"gateway": ""}, {"gateway": None}])
def test_a_user_without_a_password_is_refused(bad: dict[str, str | None]) -> None:
    with pytest.raises(ValueError, match="no password for gateway"):
        render("vab", {**PASSWORDS, **bad})  # type: ignore[dict-item]


@pytest.mark.parametrize("prefix", ["", "a*", "a:b", "x" * 33, "a b"])
def test_a_prefix_that_is_no_key_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="KEY_PREFIX"):
        render(prefix, PASSWORDS)


def test_grants_render_as_one_selector_each_with_their_access() -> None:
    user = User("u", "test", (Grant("connect", ("ping",)), Grant("r", ("xread", "xinfo|groups"), read("k:*"))))
    assert user_line(user, "h") == "user u on #h resetkeys resetchannels -@all +ping (+xread +xinfo|groups %R~k:*)"
    with pytest.raises(ValueError, match="bad commands"):
        user_line(User("u", "t", (Grant("c", ("ping",)), Grant("x", ("+@all",), read("k")))), "h")
    with pytest.raises(ValueError, match="root rules"):
        user_line(User("u", "t", (Grant("c", ("get",), read("k")),)), "h")


def test_no_user_holds_a_dangerous_command() -> None:
    dangerous = {"flushall", "flushdb", "config", "keys", "acl", "debug", "shutdown", "module", "monitor",
                 "script|flush", "client|kill", "replicaof", "save", "bgsave", "migrate", "restore"}
    for user in service_users(KeyPatterns()):
        assert not user.commands() & dangerous, user.name


@pytest.mark.parametrize("partitions", [1, 4, 1024])
def test_the_patterns_match_the_names_keys_builds_and_no_others(partitions: int) -> None:
    keys, patterns = Keys("vab", partitions), KeyPatterns("vab")
    families = {
        patterns.control(): [keys.control(p) for p in range(partitions)],
        patterns.stream("input"): [keys.input(c) for c in ("c", "a.b-c_1", "input", "x" * 64)],
        patterns.stream("transcripts"): [keys.transcripts("c")],
        patterns.stream("responses"): [keys.responses("c")],
        patterns.dead(): keys.deads(),
        patterns.bell("control"): [keys.bell(p, "control") for p in range(partitions)],
        patterns.bell("input"): [keys.bell(0, "input")],
        patterns.stats(): keys.stats_keys(),
        patterns.worker("transcriber"): [keys.worker("transcriber", "host-1-ab12")],
    }
    for pattern, names in families.items():
        for name in names:
            assert fnmatchcase(name, pattern), (pattern, name)
        others = [n for p, ns in families.items() if p != pattern for n in ns]
        assert not [n for n in others if fnmatchcase(n, pattern)], pattern
    assert not fnmatchcase(Keys("vab2").input("c"), patterns.stream("input"))
    assert fnmatchcase("vab:gw:{0}:c", patterns.gateway()) and fnmatchcase(keys.input("c"), patterns.everything())


def test_secrets_are_made_once_private_to_their_folder(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    created = create_secrets(folder)
    assert [p.name for p in created] == [f"redis_{u}" for u in USER_NAMES]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in created} == {0o644}
    first = read_secrets(folder)
    assert all(re.fullmatch(r"[0-9a-f]{64}", pw) for pw in first.values()) and len(set(first.values())) == 6
    assert create_secrets(folder) == [] and read_secrets(folder) == first  # never overwritten
    (folder / "redis_gateway").unlink()
    assert [p.name for p in create_secrets(folder)] == ["redis_gateway"]


def test_a_password_file_is_its_content_without_trailing_newlines(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("s3cret\n\n")
    assert read_password_file(path) == "s3cret"
    path.write_text("\n")
    with pytest.raises(ValueError, match="holds no password"):
        read_password_file(path)


def test_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "secrets"
    assert acl_main(["secrets", "--dir", str(folder)]) == 0
    assert capsys.readouterr().out.count("created ") == len(USER_NAMES) + 1  # and the gateway's keys
    keys = (folder / GATEWAY_KEYS_FILE).read_text().split()
    assert len(keys) == 1 and len(keys[0]) >= 16  # a key the gateway accepts
    assert acl_main(["secrets", "--dir", str(folder)]) == 0 and "created" not in capsys.readouterr().out
    assert acl_main(["template"]) == 0 and capsys.readouterr().out == template()
    assert acl_main(["render", "--key-prefix", "p1", "--dir", str(folder)]) == 0
    assert capsys.readouterr().out == render("p1", read_secrets(folder))
    assert acl_main(["render", "--key-prefix", "a*", "--dir", str(folder)]) == 2
    assert "KEY_PREFIX" in capsys.readouterr().err
