"""The hardening, checked without a Docker engine: every pin of every lock
carries its sha256 hashes (scripts/lock.sh and what it keeps), the image's
runtime stage has no compiler and runs as a numeric non-root user, and every
compose service runs on a read-only root without capabilities or privilege
gain, with memory and CPU limits and rotated logs, publishing only what it must."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
LOCKS = sorted((ROOT / "requirements").glob("*.lock"))
DOCKERFILE = ROOT / "Dockerfile"
APP_IMAGE = "voice-assistant-backend:latest"
#: What the compose file may publish on the host: Prometheus, on this host only.
PUBLISHED = {"prometheus": ["127.0.0.1:9090:9090"], "gateway_svc": ["${GATEWAY_PUBLISH:-8080}:8080"]}
#: Where each service writes; with a read-only root these must be tmpfs or volumes.
WRITES = {"redis": "/data", "prometheus": "/prometheus"}  # the project's image: /tmp
COMPILERS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|cmake|ninja-build|make)\b")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(lock: Path) -> list[list[str]]:
    """Each requirement of a lock as pip reads it: continuation lines joined, split into words."""
    text = lock.read_text().replace("\\\n", " ")
    return [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_there_are_locks() -> None:
    assert {p.name for p in LOCKS} >= {"base.lock", "dev.lock", "local.lock", "bench.lock"}


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_every_pin_of_a_lock_carries_hashes(lock: Path) -> None:
    bad = []
    for pin, *options in _requirements(lock):
        exact = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[^=;\s]+", pin)
        hashed = options and all(re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", o) for o in options)
        if not (exact and hashed):
            bad.append(" ".join([pin, *options])[:100])
    assert not bad, f"{lock.name}: every line must be name==version with --hash=sha256:... ({bad})"


def test_locks_that_share_a_pin_agree_on_version_and_hashes() -> None:
    # Installed together, pip keeps only the hashes every lock allows for a package.
    seen: dict[str, set[tuple[str, frozenset[str]]]] = {}
    for lock in LOCKS:
        for pin, *options in _requirements(lock):
            name, _, version = pin.partition("==")
            seen.setdefault(_normalize(name), set()).add((version, frozenset(options)))
    assert not [name for name, entries in seen.items() if len(entries) > 1]


def _lock_hashes() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lock_hashes", ROOT / "scripts" / "lock_hashes.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lock_hashes_keeps_what_cpython_311_can_install() -> None:
    lh = _lock_hashes()
    url = "https://files.example/packages/ab/"

    def wheel(name: str, sha256: str) -> dict[str, Any]:
        return {"url": url + name, "hashes": {"sha256": sha256}}

    native = {"name": "n", "version": "1", "sdist": {"url": url + "n-1.tar.gz", "hashes": {"sha256": "sd"}},
              "wheels": [wheel("n-1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", "x86"),
                         wheel("n-1-cp311-cp311-manylinux_2_28_aarch64.whl", "arm"),
                         wheel("n-1-cp38-abi3-macosx_11_0_arm64.whl", "abi3"),
                         wheel("n-1-cp312-abi3-win_amd64.whl", "abi3-312"),
                         wheel("n-1-cp312-cp312-manylinux_2_28_x86_64.whl", "cp312"),
                         wheel("n-1-pp311-pypy311_pp73-manylinux_2_28_x86_64.whl", "pypy")]}
    assert lh.hashes(native) == ["abi3", "arm", "sd", "x86"]  # the sdist: for platforms without a wheel
    pure = {"name": "p", "version": "1", "sdist": {"url": url + "p-1.tar.gz", "hashes": {"sha256": "sd"}},
            "wheels": [wheel("p-1-py2.py3-none-any.whl", "any")]}
    assert lh.hashes(pure) == ["any"]  # pip never builds the sdist
    assert lh.hashes({"name": "s", "version": "1", "sdist": {"url": url + "s-1.tar.gz",
                                                             "hashes": {"sha256": "sd"}}}) == ["sd"]


def _stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined, comments dropped), stage by stage."""
    stages: list[list[str]] = [[]]
    for line in DOCKERFILE.read_text().replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages[1:]


def _env(stage: list[str]) -> dict[str, str]:
    env = {}
    for line in stage:
        if line.upper().startswith("ENV "):
            env.update(dict(word.split("=", 1) for word in shlex.split(line[4:])))
    return env


def test_the_runtime_stage_has_no_compiler_and_only_the_builders_venv() -> None:
    stages = _stages()
    assert len(stages) >= 2, "a builder stage and a runtime stage"
    runtime = stages[-1]
    for line in runtime:
        if line.upper().startswith("RUN "):
            assert not COMPILERS.search(line), line
        if line.upper().startswith(("COPY ", "ADD ")):
            assert line.split()[1] == "--from=builder" and "/opt/venv" in line, line
    assert COMPILERS.search(" ".join(stages[0])), "the builder compiles llama-cpp-python"


def test_the_image_runs_as_a_numeric_non_root_user_on_a_read_only_root() -> None:
    runtime = _stages()[-1]
    users = [line.split()[1] for line in runtime if line.upper().startswith("USER ")]
    assert users and re.fullmatch(r"[1-9][0-9]*(:[1-9][0-9]*)?", users[-1]), users
    env = _env(runtime)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["HOME"] == "/tmp" and env["XDG_CACHE_HOME"].startswith("/tmp/")  # compose's tmpfs


def test_the_image_installs_the_locks_with_their_hashes() -> None:
    installs = [cmd for line in _stages()[0] for cmd in line.split("&&") if re.search(r"pip install .*\.lock", cmd)]
    assert installs
    for cmd in installs:
        assert "--require-hashes" in cmd and "--no-deps" in cmd, cmd
    # The same portable llama.cpp flags as scripts/env.sh.
    flags = re.search(r'LLAMA_CMAKE_ARGS="([^"]+)"', (ROOT / "scripts" / "env.sh").read_text())
    assert flags and f'CMAKE_ARGS="{flags.group(1)}"' in DOCKERFILE.read_text()


def _services() -> dict[str, dict[str, Any]]:
    compose = YAML(typ="safe").load((ROOT / "docker-compose.yml").read_text())
    return compose["services"]  # type: ignore[no-any-return]


SERVICES = sorted(_services())


def _bytes(size: str, k: int = 1024) -> int:
    """512m, 1g, 256mb... (docker's sizes are powers of 1024; so are redis's kb/mb/gb)."""
    m = re.fullmatch(r"(\d+)\s*([kmg]?)b?", str(size).strip().lower())
    assert m, size
    return int(m.group(1)) * k ** "_kmg".index(m.group(2) or "_")


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_is_hardened(name: str) -> None:
    svc = _services()[name]
    assert svc.get("read_only") is True
    assert svc.get("cap_drop") == ["ALL"] and not svc.get("cap_add")
    assert "no-new-privileges:true" in svc.get("security_opt", [])
    assert not svc.get("privileged")
    limits = svc.get("deploy", {}).get("resources", {}).get("limits", {})
    assert _bytes(svc.get("mem_limit") or limits["memory"]) > 0
    assert float(svc.get("cpus") or limits["cpus"]) > 0
    logging = svc.get("logging", {})
    assert logging.get("driver") == "json-file"
    assert {"max-size", "max-file"} <= set(logging.get("options", {}))
    assert svc.get("ports", []) == PUBLISHED.get(name, []), "publish only what must be"


@pytest.mark.parametrize("name", SERVICES)
def test_a_read_only_service_writes_only_to_a_tmpfs_or_a_volume(name: str) -> None:
    svc = _services()[name]
    where = "/tmp" if svc.get("image") == APP_IMAGE else WRITES[name]
    tmpfs = [t.split(":")[0] for t in svc.get("tmpfs", [])]
    volumes = [v.split(":")[1] for v in svc.get("volumes", []) if not v.endswith(":ro")]
    assert where in tmpfs + volumes


def test_redis_runs_as_its_user_under_a_maxmemory_below_its_container_limit() -> None:
    redis = _services()["redis"]
    assert redis.get("user") not in (None, "root", "0")
    command = redis["command"]
    maxmemory = _bytes(command[command.index("--maxmemory") + 1])
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert 0 < maxmemory < _bytes(redis["mem_limit"])
