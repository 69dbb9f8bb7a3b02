# chatbuffer: one image for every role (`api`, `worker`, `serve`, `migrate`, `doctor`, ...).
#
# Two stages: the first resolves and installs the locked dependencies with uv, the second copies
# only the resulting virtual environment onto a clean slim Python, so neither uv nor any build
# tool ships in the image that runs.
#
#   docker build -t chatbuffer .
#   docker run --rm --env-file chatbuffer.env chatbuffer doctor

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv
# Bytecode compiled once here, not by each container at start; files copied, not hard-linked
# into a cache that does not reach the next stage; the image's own Python, never a download.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# Dependencies first, in their own layer: a change to the code does not reinstall them.
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project
COPY src ./src
# --no-editable: the package itself is copied into the environment, so /src can stay behind.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 chatbuffer \
    && useradd --system --uid 10001 --gid chatbuffer --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin chatbuffer
COPY --from=build --chown=root:root /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
# Read-only code, owned by root; the service user writes nowhere but its working directory
# (the SQLite file of a one-container `serve`, if that is how it runs).
RUN chown chatbuffer:chatbuffer /app
USER chatbuffer
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["chatbuffer"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
