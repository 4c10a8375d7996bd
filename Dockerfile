# syntax=docker/dockerfile:1
# mmcl-stream: the worker, the trainer and the tools in one image (entrypoint `mmcl`, default command `worker`).
#   CPU (default):  docker build -t mmcl-stream:latest .
#   CUDA:           docker build --build-arg TORCH_INDEX=https://pypi.org/simple -t mmcl-stream:cuda .
# PyPI's torch wheel for Linux x86_64 is the CUDA build and brings the CUDA runtime as wheels: the host needs only
# the NVIDIA driver and the container toolkit (deploy/compose.gpu.yaml, deploy/k8s/overlays/gpu).
# The raw-media extractors (`mmcl extract`, `mmcl stream-call`) are in by default: WITH_EXTRACTORS=0 leaves them out
# (the worker and trainer need none of them), EXTRA_EXTRACTORS="asr glove" adds speech-to-text and GloVe.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG WITH_EXTRACTORS=1
ARG EXTRA_EXTRACTORS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/mmcl
ENV PATH=/opt/mmcl/bin:$PATH
# torch first, from the chosen index: a plain `pip install .` would take PyPI's CUDA build on a CPU image
RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY mmcl ./mmcl
COPY streams ./streams
COPY extractors ./extractors
COPY scripts/install_extractors.sh ./scripts/install_extractors.sh
RUN pip install . && \
    if [ "${WITH_EXTRACTORS}" = 1 ]; then PY=python EDITABLE= bash scripts/install_extractors.sh ${EXTRA_EXTRACTORS}; fi

FROM python:${PYTHON_VERSION}-slim-bookworm
# libgl1 / libglib2.0-0: MediaPipe's native code loads them; tini reaps children and forwards SIGTERM
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 tini && \
    rm -rf /var/lib/apt/lists/* && \
    useradd --system --uid 10001 --gid 0 --home-dir /var/lib/mmcl --create-home --shell /usr/sbin/nologin mmcl && \
    chmod g+rwX /var/lib/mmcl
COPY --from=build /opt/mmcl /opt/mmcl
ENV PATH=/opt/mmcl/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    MMCL_STATE_DIR=/var/lib/mmcl \
    MMCL_METRICS__HOST=0.0.0.0
WORKDIR /var/lib/mmcl
USER 10001
# 9464: worker /metrics /healthz /readyz; 9465: trainer
EXPOSE 9464 9465
ENTRYPOINT ["/usr/bin/tini", "--", "mmcl"]
CMD ["worker"]
