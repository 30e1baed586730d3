# Sourced by run.sh and scripts/test.sh: make .venv hold exactly the given locks.
# A stamp of the locks' hash (and of this file) skips the install when nothing changed.

# llama-cpp-python compiles llama.cpp at install time. Its default, -march=native, uses
# every instruction the CPU lists; some virtual machines list AMX without enabling it,
# and the first matrix product then dies with SIGILL. So build for x86-64-v3
# (AVX2/FMA/F16C) instead, once per machine, into a wheel folder keyed by the version
# and these flags (pip's own wheel cache ignores build flags, so it could hand back a
# native build). The version, and the sdist's sha256 that pip checks before building,
# come from the lock.
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"

# The llama-cpp-python requirement of a lock, with its --hash lines.
llama_requirement() {
  awk 'index($0, "llama_cpp_python==") == 1 {on = 1} on {print; if ($0 !~ /\\$/) exit}' "$1"
}

portable_llama_wheel() {
  local pip="$1" lock="$2" version key dir req
  version="$(llama_requirement "$lock" | sed -n '1s/^llama_cpp_python==\([^ \\]*\).*/\1/p')"
  key="$(printf '%s %s %s' "$version" "$LLAMA_CMAKE_ARGS" "$(uname -m)" | sha256sum | cut -c1-16)"
  dir="${XDG_CACHE_HOME:-$HOME/.cache}/vab-wheels/$key"
  if ! ls "$dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "[setup] compiling llama.cpp $version (portable x86-64-v3 build, a few minutes, once per machine)" >&2
    mkdir -p "$dir"
    req="$(mktemp)"
    llama_requirement "$lock" > "$req"
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" "$pip" wheel -q --disable-pip-version-check --no-deps --no-cache-dir \
      --require-hashes --no-binary llama-cpp-python -w "$dir" -r "$req" >&2
    rm -f "$req"
  fi
  ls "$dir"/llama_cpp_python-*.whl | head -n1
}

# Python 3.11 is the one supported version (the one the README names and CI runs).
is_python_311() {
  "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' >/dev/null 2>&1
}

python_311() {
  local py
  for py in "${PYTHON:-}" python3.11 python3; do
    if [ -n "$py" ] && command -v "$py" >/dev/null 2>&1 && is_python_311 "$py"; then
      echo "$py"
      return 0
    fi
  done
  echo "[setup] needs Python 3.11 (python3.11 or python3 on PATH, or PYTHON=/path/to/python3.11)" >&2
  return 1
}

ensure_venv() {
  local root venv stamp want
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  venv="$root/.venv"
  if [ ! -x "$venv/bin/python" ] || ! is_python_311 "$venv/bin/python"; then
    rm -rf "$venv"
    "$(python_311)" -m venv "$venv"
  fi
  stamp="$venv/.locks-installed"
  want="$(cd "$root" && cat pyproject.toml scripts/env.sh "$@" | sha256sum | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[setup] installing $* into .venv" >&2
    local reqs=() llama_wheel=""
    for lock in "$@"; do
      reqs+=(-r "$root/$lock")
      if [ "$(uname -m)" = "x86_64" ] && grep -q "^llama_cpp_python==" "$root/$lock"; then
        llama_wheel="$(portable_llama_wheel "$venv/bin/pip" "$root/$lock")"
      fi
    done
    if [ -n "$llama_wheel" ]; then
      # The portable build replaces whatever llama-cpp-python a cache or an earlier install
      # left. A local build has no published hash: its sdist's was checked before building.
      "$venv/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall "$llama_wheel"
    fi
    # Every file the locks bring must match one of their hashes; an installed release of
    # the locked version (the portable llama-cpp-python) is kept as it is.
    "$venv/bin/pip" install -q --disable-pip-version-check --no-deps --require-hashes "${reqs[@]}"
    # The project itself, editable: a source tree has no hash, so in a call of its own.
    "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -e "$root"
    echo "$want" > "$stamp"
  fi
  export PATH="$venv/bin:$PATH"
}

# The browser tests (tests/test_browser_*.py) drive Debian's Chromium with Playwright,
# which must never download a browser of its own. Installed once per machine.
ensure_chromium() {
  if [ -x /usr/bin/chromium ]; then
    return 0
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo="sudo"
    else
      echo "[setup] the browser tests need Debian's chromium (/usr/bin/chromium); install it as root:" >&2
      echo "[setup]   apt-get update && apt-get install -y --no-install-recommends chromium" >&2
      return 1
    fi
  fi
  echo "[setup] installing chromium for the browser tests" >&2
  $sudo apt-get update -q >&2 && $sudo env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends chromium >&2 || {
    echo "[setup] apt-get could not install chromium (see above); the browser tests need /usr/bin/chromium" >&2
    return 1
  }
}
