# rnnserve images: one Dockerfile, three targets, picked with --target:
#   server-cpu   the gRPC server on onnxruntime (CPU), on PYTHON_IMAGE. Only the server's
#                dependencies: no torch.
#   builder      torch (CPU build) and the export extra: trains and exports the default models
#                into /models, the one-shot `models` job of docker-compose.yml.
#   server-gpu   the server on onnxruntime-gpu, on the NVIDIA CUDA 13 + cuDNN 9 runtime image.
#                The default target (the last stage).
#
#   docker build --target server-cpu -t rnnserve:cpu .
#   docker build --target builder -t rnnserve-builder .
#   docker build --target server-gpu -t rnnserve:gpu .
#
# BuildKit builds only the stages a target needs. The classic builder (DOCKER_BUILDKIT=0, or a
# docker without buildx) builds every stage before the target as well; the stages are ordered
# so that server-cpu and builder never touch the CUDA image, while server-gpu under the classic
# builder also builds the CPU stages above it.
#
# Build inputs, all optional (README, "Building behind a proxy or offline"):
#   --build-arg PYTHON_IMAGE=IMAGE   Python 3.11 base of every stage but the GPU ones;
#                                    deploy/base-image.sh makes one from Debian's archive
#   --build-arg CUDA_IMAGE=IMAGE     base of the GPU stages
#   --build-arg CA_CERTIFICATES=DIR  folder in the build context whose *.crt files (PEM) pip and
#                                    the images trust, e.g. a TLS-intercepting proxy's CA
#                                    (default deploy/ca-certificates)
#   --build-arg WHEELS=DIR           folder in the build context of wheels pip takes first
#                                    (default deploy/wheels); a torch wheel there is the builder's
#   --build-arg PIP_NO_INDEX=1       WHEELS is the only source: no index is asked (air-gapped)
#   --build-arg PIP_INDEX_URL=URL    another package index (a mirror) instead of PyPI
#   --build-arg TORCH_INDEX_URL=URL  where the builder finds torch's CPU build when WHEELS has
#                                    no torch wheel (PyPI's torch is the CUDA build)
#   --build-arg COMPILED=0           ship the server's hot modules as Python: no C compiler is
#                                    installed from the distribution's archive to compile them
#                                    with mypyc (by default every server image runs them
#                                    compiled, each for its own Python)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# onnxruntime-gpu 1.31 from PyPI links libcudart.so.13 and cuDNN 9.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# What every image shares: the extra CA certificates trusted, the user rnnserve (uid and gid
# 10001, with a home) and the model repository /models it owns.
FROM ${PYTHON_IMAGE} AS runtime
ARG CA_CERTIFICATES=deploy/ca-certificates
COPY deploy/install.sh /opt/rnnserve/
COPY ${CA_CERTIFICATES}/ /tmp/ca-certificates/
RUN /opt/rnnserve/install.sh runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RNNSERVE_MODEL_REPOSITORY=/models

# The dependencies of the server, read from the parts' pyproject.toml files and pinned by
# requirements.lock: this layer is rebuilt when they change, not when the code does.
FROM runtime AS deps-cpu
ARG WHEELS=deploy/wheels
ARG PIP_NO_INDEX
ARG PIP_INDEX_URL
COPY pyproject.toml requirements.lock /tmp/project/
COPY protos/pyproject.toml /tmp/project/protos/
COPY model/pyproject.toml /tmp/project/model/
COPY client/pyproject.toml /tmp/project/client/
COPY service/pyproject.toml /tmp/project/service/
COPY export/pyproject.toml /tmp/project/export/
COPY ${WHEELS}/ /tmp/wheels/
RUN /opt/rnnserve/install.sh deps cpu

# The parts' wheels, from the build context that .dockerignore leaves (pip wheel PART), and
# the server part's compiled by mypyc, which the CPU images install (COMPILED=0: not built).
FROM runtime AS wheel
ARG WHEELS=deploy/wheels
ARG PIP_NO_INDEX
ARG PIP_INDEX_URL
ARG COMPILED=1
COPY . /src
RUN /opt/rnnserve/install.sh wheel "/src/${WHEELS}"

FROM runtime AS server-cpu
COPY --from=deps-cpu /opt/venv /opt/venv
COPY --from=wheel /dist /dist
COPY deploy/healthcheck.py /opt/rnnserve/
RUN /opt/rnnserve/install.sh rnnserve cpu
ENV RNNSERVE_PROVIDERS='["CPUExecutionProvider"]'
USER 10001:10001
WORKDIR /opt/rnnserve
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "/opt/rnnserve/healthcheck.py"]
CMD ["rnnserve", "serve"]

FROM deps-cpu AS deps-builder
ARG WHEELS=deploy/wheels
ARG PIP_NO_INDEX
ARG PIP_INDEX_URL
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY pyproject.toml requirements.lock /tmp/project/
COPY protos/pyproject.toml /tmp/project/protos/
COPY model/pyproject.toml /tmp/project/model/
COPY client/pyproject.toml /tmp/project/client/
COPY service/pyproject.toml /tmp/project/service/
COPY export/pyproject.toml /tmp/project/export/
COPY ${WHEELS}/ /tmp/wheels/
RUN /opt/rnnserve/install.sh deps cpu,export

FROM runtime AS builder
COPY --from=deps-builder /opt/venv /opt/venv
COPY --from=wheel /dist /dist
COPY deploy/build_models.py /opt/rnnserve/
RUN /opt/rnnserve/install.sh rnnserve cpu,export
USER 10001:10001
WORKDIR /opt/rnnserve
CMD ["python3", "/opt/rnnserve/build_models.py", "/models"]

FROM ${CUDA_IMAGE} AS runtime-gpu
ARG CA_CERTIFICATES=deploy/ca-certificates
# Ubuntu 24.04's python3 is 3.12; the image needs only the interpreter and venv.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY deploy/install.sh /opt/rnnserve/
COPY ${CA_CERTIFICATES}/ /tmp/ca-certificates/
RUN /opt/rnnserve/install.sh runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RNNSERVE_MODEL_REPOSITORY=/models

# The server part compiled by mypyc for the GPU image's Python (Ubuntu 24.04's 3.12), as the
# wheel stage compiles it for the CPU images' 3.11 (COMPILED=0: not built).
FROM runtime-gpu AS wheel-gpu
ARG WHEELS=deploy/wheels
ARG PIP_NO_INDEX
ARG PIP_INDEX_URL
ARG COMPILED=1
COPY . /src
RUN /opt/rnnserve/install.sh compiled "/src/${WHEELS}"

FROM runtime-gpu AS deps-gpu
ARG WHEELS=deploy/wheels
ARG PIP_NO_INDEX
ARG PIP_INDEX_URL
COPY pyproject.toml requirements.lock /tmp/project/
COPY protos/pyproject.toml /tmp/project/protos/
COPY model/pyproject.toml /tmp/project/model/
COPY client/pyproject.toml /tmp/project/client/
COPY service/pyproject.toml /tmp/project/service/
COPY export/pyproject.toml /tmp/project/export/
COPY ${WHEELS}/ /tmp/wheels/
RUN /opt/rnnserve/install.sh deps gpu

FROM runtime-gpu AS server-gpu
COPY --from=deps-gpu /opt/venv /opt/venv
COPY --from=wheel /dist /dist
COPY --from=wheel-gpu /dist /dist
COPY deploy/healthcheck.py /opt/rnnserve/
RUN /opt/rnnserve/install.sh rnnserve gpu
ENV RNNSERVE_PROVIDERS='["CUDAExecutionProvider","CPUExecutionProvider"]'
USER 10001:10001
WORKDIR /opt/rnnserve
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "/opt/rnnserve/healthcheck.py"]
CMD ["rnnserve", "serve"]
