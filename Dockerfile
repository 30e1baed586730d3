# One image for the three services. The local engines (faster-whisper, llama.cpp)
# are included by default; build with --build-arg WITH_LOCAL=0 for a slim image
# that runs the openai / simulated / echo engines only.
FROM python:3.11-slim

ARG WITH_LOCAL=1
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LOG_FORMAT=json
WORKDIR /app

# llama-cpp-python compiles from source: it needs a C/C++ toolchain and cmake.
RUN if [ "$WITH_LOCAL" = "1" ]; then \
      apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
      && rm -rf /var/lib/apt/lists/*; \
    fi

COPY requirements/ requirements/
# llama.cpp for x86-64-v3, not -march=native: a host that lists AMX without enabling it
# (some VMs) kills the first matrix product with SIGILL (see scripts/env.sh).
RUN pip install --no-cache-dir --no-deps -r requirements/base.lock \
    && if [ "$WITH_LOCAL" = "1" ]; then \
      CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
      pip install --no-cache-dir --no-deps -r requirements/local.lock; \
    fi

COPY pyproject.toml README.md ./
COPY shared/ shared/
COPY transcriber_svc/ transcriber_svc/
COPY conversation_svc/ conversation_svc/
COPY simulator_svc/ simulator_svc/
RUN pip install --no-cache-dir --no-deps .

RUN useradd --system --uid 10001 app
USER app
CMD ["python", "-m", "simulator_svc", "--help"]
