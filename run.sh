#!/usr/bin/env bash
# The run command: builds .venv from the locks, finds or starts a Redis, starts the
# services, runs the simulated dialogue, stops everything. Options go to the simulator.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/env.sh
ensure_venv requirements/base.lock requirements/local.lock
exec python -m shared.devstack "$@"
