# Prometheus from Debian's package, for the deployment test on machines that reach Debian's
# archive but no image registry. BASE_IMAGE: deploy/base-image.sh's Debian bookworm.
ARG BASE_IMAGE=rnnserve-base:bookworm
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus \
    && chown prometheus:prometheus /prometheus
# The package makes the user; its uid is whatever the install gave it.
# hadolint ignore=DL3066
USER prometheus
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
