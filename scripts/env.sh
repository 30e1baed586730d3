# Sourced by run.sh and scripts/test.sh: make .venv hold exactly the given locks.
# A stamp of the locks' hash (and of this file) skips the install when nothing changed.

# llama-cpp-python compiles llama.cpp at install time. Its default, -march=native, uses
# every instruction the CPU lists; some virtual machines list AMX without enabling it,
# and the first matrix product then dies with SIGILL. So build for x86-64-v3
# (AVX2/FMA/F16C) instead, once per machine, into a wheel folder keyed by these flags
# (pip's own wheel cache ignores build flags, so it could hand back a native build).
LLAMA_CPP_VERSION=0.3.36
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"

portable_llama_wheel() {
  local pip="$1" key dir
  key="$(printf '%s %s %s' "$LLAMA_CPP_VERSION" "$LLAMA_CMAKE_ARGS" "$(uname -m)" | sha256sum | cut -c1-16)"
  dir="${XDG_CACHE_HOME:-$HOME/.cache}/vab-wheels/$key"
  if ! ls "$dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "[setup] compiling llama.cpp (portable x86-64-v3 build, a few minutes, once per machine)" >&2
    mkdir -p "$dir"
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" "$pip" wheel -q --disable-pip-version-check --no-deps --no-cache-dir \
      --no-binary llama-cpp-python -w "$dir" "llama-cpp-python==$LLAMA_CPP_VERSION" >&2
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
        llama_wheel="$(portable_llama_wheel "$venv/bin/pip")"
      fi
    done
    if [ -n "$llama_wheel" ]; then
      # The portable build replaces whatever llama-cpp-python a cache or an earlier install left.
      "$venv/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall "$llama_wheel"
    fi
    "$venv/bin/pip" install -q --disable-pip-version-check --no-deps "${reqs[@]}"
    "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -e "$root"
    echo "$want" > "$stamp"
  fi
  export PATH="$venv/bin:$PATH"
}
