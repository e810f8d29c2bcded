# syntax=docker/dockerfile:1.7
# grft: one image for the API (`grft serve`), the GPU worker (`grft worker`) and one-off commands
# (`grft db upgrade`, `grft keys create`). Build: docker build -t grft .
# Exact versions. To pin by digest as well (the registry's answer for the tag, not a guess):
#   docker buildx imagetools inspect python:3.11.10-slim-bookworm   → PYTHON_IMAGE=python:3.11.10-slim-bookworm@sha256:…
#   docker buildx imagetools inspect ghcr.io/astral-sh/uv:0.13.9    → the COPY --from image below
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm

# --- builder: resolve nothing, install exactly what uv.lock pins ----------------------------------
FROM ${PYTHON_IMAGE} AS builder
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /uvx /usr/local/bin/
# Bytecode compiled at build time (the runtime user cannot write into the venv); copies, not links,
# because the cache mount is not part of the image; the image's own Python, never a downloaded one.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app
# Dependencies first, in their own layer: it is rebuilt only when the lock changes, not on every edit.
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project
COPY grft_core ./grft_core
COPY domain ./domain
COPY api ./api
COPY worker ./worker
COPY migrations ./migrations
COPY alembic.ini ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev

# --- runtime: the venv and the source, no build tools, not root -----------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 grft \
    && useradd --system --uid 10001 --gid grft --home-dir /home/grft --create-home grft \
    && mkdir -p /data /models \
    && chown grft:grft /data /models
# Same path as in the builder: the venv's scripts and its editable install point at /app.
COPY --from=builder /app /app
WORKDIR /app
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GRFT_HOME=/data \
    GRFT_MODEL_DIR=/models \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false
USER grft
VOLUME ["/data", "/models"]
# 8000: the API (`grft serve`); 9101: a worker's metrics when GRFT_WORKER_METRICS_PORT=9101.
EXPOSE 8000 9101
ENTRYPOINT ["grft"]
CMD ["serve", "--host", "0.0.0.0"]
