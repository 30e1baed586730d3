# One image for the three services. The local engines (faster-whisper, llama.cpp)
# are included by default; build with --build-arg WITH_LOCAL=0 for a slim image
# that runs the openai / simulated / echo engines only.
#
# Two stages: the builder installs the locks (every downloaded file checked against
# their sha256) and the project into a venv, compiling what must be compiled; the
# runtime stage gets that venv and nothing else of the build: no compiler, no pip
# cache, no source tree. Both stages must use the same Python (the venv links to it).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ARG WITH_LOCAL=1
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# llama-cpp-python compiles from source: it needs a C/C++ toolchain and cmake.
RUN if [ "$WITH_LOCAL" = "1" ]; then \
      apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
      && rm -rf /var/lib/apt/lists/*; \
    fi

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

COPY requirements/ requirements/
# llama.cpp for x86-64-v3, not -march=native: a host that lists AMX without enabling it
# (some VMs) kills the first matrix product with SIGILL (see scripts/env.sh).
RUN pip install --no-deps --require-hashes -r requirements/base.lock \
    && if [ "$WITH_LOCAL" = "1" ]; then \
      CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
      pip install --no-deps --require-hashes -r requirements/local.lock; \
    fi

COPY pyproject.toml README.md ./
COPY shared/ shared/
COPY transcriber_svc/ transcriber_svc/
COPY conversation_svc/ conversation_svc/
COPY simulator_svc/ simulator_svc/
COPY gateway_svc/ gateway_svc/
# The project itself: a source tree has no hash, so in a pip call of its own.
RUN pip install --no-deps .


FROM ${PYTHON_IMAGE}
ARG WITH_LOCAL=1
# The local llama.cpp build links the system's OpenMP runtime (the wheels from PyPI
# carry their own libraries): a shared library, not a compiler.
RUN if [ "$WITH_LOCAL" = "1" ]; then \
      apt-get update && apt-get install -y --no-install-recommends libgomp1 \
      && rm -rf /var/lib/apt/lists/*; \
    fi

# Everything the services load lives in the venv's site-packages: the project, the
# Lua scripts, espeakng-loader's library and voice data, the whisper model and the GGUF.
COPY --from=builder /opt/venv /opt/venv

# The root filesystem can be read-only (compose mounts a tmpfs on /tmp): no bytecode
# written (pip compiled it in the builder), and HOME and caches on /tmp.
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LOG_FORMAT=json \
    HOME=/tmp XDG_CACHE_HOME=/tmp/.cache
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp app
WORKDIR /app
# Numeric, so that a runtime can tell it is not root without reading /etc/passwd.
USER 10001:10001
CMD ["python", "-m", "simulator_svc", "--help"]
