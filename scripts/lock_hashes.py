"""Write a lock with hashes: each pin of PINS, with the sha256 of every file pip
could pick for it on CPython 3.11, whatever the platform.

    python scripts/lock_hashes.py PYLOCK PINS > LOCK

PINS holds one ``name==version`` a line (its spelling and order are kept);
PYLOCK is ``uv pip compile --universal --no-deps --format pylock.toml PINS``,
which lists every file of each pinned release with its hash. Kept: the wheels
one of whose tags CPython 3.11 accepts (cp311, abi3 from cp32 on, py3/py3x with
no ABI), on any platform; and the sdist, unless a platform-independent wheel
means pip never picks it. scripts/lock.sh runs this.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

MINOR = 11  # CPython 3.11, the one supported version


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def accepts(interpreter: str, abi: str) -> bool:
    """Whether CPython 3.11 installs a wheel with this interpreter and ABI tag."""
    if interpreter == f"cp3{MINOR}":
        return abi in (f"cp3{MINOR}", "abi3", "none")
    if m := re.fullmatch(r"cp3(\d+)", interpreter):
        return abi == "abi3" and 2 <= int(m.group(1)) <= MINOR
    if m := re.fullmatch(r"py3(\d*)", interpreter):
        return abi == "none" and (not m.group(1) or int(m.group(1)) <= MINOR)
    return False


def wheel_tags(filename: str) -> tuple[bool, bool]:
    """(CPython 3.11 accepts it, it fits every platform) for a wheel's file name."""
    parts = filename[: -len(".whl")].split("-")
    interpreters, abis, platforms = parts[-3].split("."), parts[-2].split("."), parts[-1].split(".")
    ok = any(accepts(i, a) for i in interpreters for a in abis)
    return ok, "any" in platforms


def file_name(url: str) -> str:
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1])


def hashes(package: dict[str, Any]) -> list[str]:
    kept: list[str] = []
    universal = False
    for wheel in package.get("wheels", []):
        ok, anywhere = wheel_tags(file_name(wheel["url"]))
        if ok:
            kept.append(wheel["hashes"]["sha256"])
            universal = universal or anywhere
    sdist = package.get("sdist")
    if sdist and not universal:
        kept.append(sdist["hashes"]["sha256"])
    return sorted(set(kept))


def main(pylock: Path, pins: Path) -> str:
    packages = {normalize(p["name"]): p for p in tomllib.loads(pylock.read_text())["packages"]}
    out = []
    for line in pins.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, _, version = line.strip().partition("==")
        package = packages.get(normalize(name))
        if package is None or package["version"] != version:
            sys.exit(f"{line}: not in {pylock} (found {package and package['version']})")
        found = hashes(package)
        if not found:
            sys.exit(f"{line}: no file of this release installs on CPython 3.{MINOR}")
        out.append(" \\\n".join([line.strip(), *(f"    --hash=sha256:{h}" for h in found)]))
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.stdout.write(main(Path(sys.argv[1]), Path(sys.argv[2])))
