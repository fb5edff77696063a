# The model repository as an image, for Kubernetes (deploy/kubernetes/): the default models,
# trained once by the builder image when this image is built, on the same small base as the
# CPU server. The Deployment's init container copies them into the pod's model volume:
# every replica serves the same graphs, and a pod starts in seconds. README, "Kubernetes".
#
#   docker build --target builder -t rnnserve-builder:0.1.0 .
#   docker build -f deploy/kubernetes/models.Dockerfile -t rnnserve-models:0.1.0 deploy/kubernetes
#
# Build arguments:
#   BUILDER_IMAGE           the builder image (Dockerfile, target builder)
#   PYTHON_IMAGE            base of the result: the CPU server's, so nodes share its layers
#   RNNSERVE_BUILD_PRESET   default; tiny trains in seconds (for tests)
# A model changed later goes in as a new version folder: sequences in flight continue on the
# version holding their state, on every pod.

ARG BUILDER_IMAGE=rnnserve-builder:0.1.0
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${BUILDER_IMAGE} AS models
ARG RNNSERVE_BUILD_PRESET=default
RUN python3 /opt/rnnserve/build_models.py /models

FROM ${PYTHON_IMAGE}
COPY --from=models --chown=10001:10001 /models /models
USER 10001:10001
CMD ["cp", "-R", "/models/.", "/repository/"]
