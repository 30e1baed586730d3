#!/usr/bin/env bash
# The test command: builds .venv from the locks (and installs Chromium for the browser
# tests), runs the linters, then the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ensure_venv requirements/base.lock requirements/dev.lock requirements/local.lock requirements/bench.lock
ensure_chromium
ruff check .
mypy
exec pytest -q "$@"
