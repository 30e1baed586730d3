# Sourced by run.sh and scripts/test.sh: make .venv hold exactly the given locks.
# A stamp of the locks' hash skips the install when nothing changed.
ensure_venv() {
  local root venv stamp want
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  venv="$root/.venv"
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  stamp="$venv/.locks-installed"
  want="$(cd "$root" && cat pyproject.toml "$@" | sha256sum | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[setup] installing $* into .venv (first run: the local engines compile for a few minutes)" >&2
    local reqs=()
    for lock in "$@"; do reqs+=(-r "$root/$lock"); done
    "$venv/bin/pip" install -q --disable-pip-version-check --no-deps "${reqs[@]}"
    "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -e "$root"
    echo "$want" > "$stamp"
  fi
  export PATH="$venv/bin:$PATH"
}
