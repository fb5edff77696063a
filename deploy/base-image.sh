#!/usr/bin/env bash
# The Python base image the Dockerfile builds FROM (build argument PYTHON_IMAGE), for machines
# that reach Debian's archive but no image registry: a minimal Debian bookworm (debootstrap
# --variant=minbase) with python3 (3.11), python3-venv and ca-certificates, turned into an
# image with `docker import`. Where the registry answers, the upstream image is pulled and
# tagged instead, unless --no-pull.
#
# Usage: deploy/base-image.sh [--no-pull] [TAG]        (TAG default: rnnserve-base:bookworm)
#   then: docker build --build-arg PYTHON_IMAGE=TAG --target server-cpu .
# Needs root and debootstrap (apt-get install debootstrap). DEBIAN_MIRROR picks the archive
# (default http://deb.debian.org/debian). An image that already has TAG is kept as it is.
set -euo pipefail

pull=1
if [[ ${1:-} == --no-pull ]]; then
    pull=0
    shift
fi
tag=${1:-rnnserve-base:bookworm}
upstream=python:3.11-slim-bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "$tag: present"
    exit 0
fi
if [[ $pull -eq 1 ]] && docker pull "$upstream"; then
    docker tag "$upstream" "$tag"
    echo "$tag: $upstream"
    exit 0
fi

rootfs=$(mktemp -d /tmp/rnnserve-rootfs.XXXXXX)
trap 'rm -rf "$rootfs" "$rootfs.log"' EXIT
echo "==> debootstrap bookworm from $mirror"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
    tail -n 30 "$rootfs.log" >&2
    exit 1
}
# What an image never uses: package caches and lists (images run apt-get update first),
# documentation and translations.
rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*
echo "==> docker import $tag"
tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "Debian bookworm minbase with python3, python3-venv, ca-certificates" \
    - "$tag"
