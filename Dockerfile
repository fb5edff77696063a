# syntax=docker/dockerfile:1
# rnnserve images, one Dockerfile, two targets:
#   server  (default)  the gRPC server. VARIANT=gpu (default): NVIDIA CUDA 13 + cuDNN 9 runtime
#                      base with onnxruntime-gpu; VARIANT=cpu: python:3.11-slim with onnxruntime.
#                      Only the server's dependencies: no torch.
#   builder            trains and exports the default models into /models (torch, CPU build);
#                      the one-shot `models` job of docker-compose.yml.
# Build: docker build -t rnnserve:gpu .   docker build --build-arg VARIANT=cpu -t rnnserve:cpu .

ARG VARIANT=gpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# onnxruntime-gpu 1.31 from PyPI links libcudart.so.13 and cuDNN 9.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# The rnnserve wheel; its build hook compiles protos/ into the gRPC stubs.
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml hatch_build.py README.md ./
COPY protos/ protos/
COPY rnnserve/ rnnserve/
COPY service/ service/
COPY export/ export/
COPY client/ client/
COPY bench/ bench/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS base-cpu
ENV RNNSERVE_PROVIDERS='["CPUExecutionProvider"]'

FROM ${CUDA_IMAGE} AS base-gpu
# Ubuntu 24.04's python3 is 3.12; the image needs only the interpreter and venv.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV RNNSERVE_PROVIDERS='["CUDAExecutionProvider","CPUExecutionProvider"]'

# hadolint ignore=DL3006
FROM base-${VARIANT} AS server
ARG VARIANT
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RNNSERVE_MODEL_REPOSITORY=/models
COPY --from=wheel /wheels /wheels
COPY deploy/install.sh deploy/healthcheck.py /opt/rnnserve/
RUN /opt/rnnserve/install.sh "${VARIANT}"
USER 10001:10001
WORKDIR /opt/rnnserve
EXPOSE 8001 8002
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "/opt/rnnserve/healthcheck.py"]
CMD ["rnnserve", "serve"]

# Trains the default models; torch from the CPU wheel index keeps the image small.
FROM ${PYTHON_IMAGE} AS builder
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1
COPY --from=wheel /wheels /wheels
COPY deploy/install.sh deploy/build_models.py /opt/rnnserve/
RUN /opt/rnnserve/install.sh export --extra-index-url https://download.pytorch.org/whl/cpu
USER 10001:10001
WORKDIR /opt/rnnserve
CMD ["python3", "/opt/rnnserve/build_models.py", "/models"]

# `docker build .` without --target gives the server.
FROM server
