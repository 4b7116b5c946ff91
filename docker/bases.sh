#!/usr/bin/env bash
# Build local stand-ins for the public base images our Dockerfiles name, on a machine that
# cannot pull from Docker Hub or ghcr.io: `make docker-bases` (or `bash docker/bases.sh [NAME...]`).
#
# Each stand-in is tagged with the public name it stands in for, so every Dockerfile and the
# compose file build unchanged, and carries the label org.mlpipe.stand-in saying what it is.
# A tag that already exists (a stand-in built before, or the real image pulled) is reused.
#
#   debian:bookworm-slim             debootstrap --variant=minbase from the host's Debian mirror
#   python:<host python>-slim        that, plus the host's own CPython in /usr/local, pip by ensurepip
#   tensorflow/tensorflow:2.21.0-gpu that, plus Debian's python3 and tensorflow from PyPI (no CUDA)
#   postgres:17                      that, plus Debian's PostgreSQL 15 and a docker-entrypoint.sh
#   ghcr.io/mlflow/mlflow:v3.17.2    python:<ver>-slim plus mlflow from PyPI
#
# Names: debian python tensorflow postgres mlflow (default: all). Needs root, docker, debootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."

TENSORFLOW_VERSION=${TENSORFLOW_VERSION:-2.21.0}
MLFLOW_VERSION=${MLFLOW_VERSION:-3.17.2}
PYTHON_BIN=${PYTHON_BIN:-python3.11}
PYTHON_VERSION=$("$PYTHON_BIN" -c 'import platform; print(platform.python_version())')
PYTHON_PREFIX=$("$PYTHON_BIN" -c 'import sys; print(sys.base_prefix)')
STAND_IN_LABEL="org.mlpipe.stand-in"
HOST_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

declare -A IMAGE=(
    [debian]=debian:bookworm-slim
    [python]=python:${PYTHON_VERSION}-slim
    [tensorflow]=tensorflow/tensorflow:${TENSORFLOW_VERSION}-gpu
    [postgres]=postgres:17
    [mlflow]=ghcr.io/mlflow/mlflow:v${MLFLOW_VERSION}
)
declare -A NEEDS=([python]=debian [tensorflow]=debian [postgres]=debian [mlflow]=python)

say() { echo "docker-bases: $*" >&2; }

present() { docker image inspect "$1" >/dev/null 2>&1; }

# The first Debian mirror apt uses on this host (deb822 or one-line sources).
debian_mirror() {
    local uri
    uri=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}')
    if [ -z "$uri" ]; then
        uri=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | head -1 | awk '{print $2}')
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

# A build context holding the host's CA bundle: inside containers pip reaches PyPI only
# through it here (the real images trust the public CAs, which is all they need elsewhere).
context_with_ca() {
    local dir
    dir=$(mktemp -d)
    cp "$HOST_CA_BUNDLE" "$dir/host-ca-certificates.crt"
    echo "$dir"
}

build_debian() {
    local root
    root=$(mktemp -d)
    # The libraries CPython links against, so the python stand-in needs no apt step of its own.
    debootstrap --variant=minbase \
        --include=ca-certificates,netbase,tzdata,libssl3,libffi8,libsqlite3-0,libbz2-1.0,liblzma5,libreadline8,libncursesw6,libuuid1,libexpat1,libgdbm6,zlib1g \
        bookworm "$root" "$(debian_mirror)" >/dev/null
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | docker import \
        --change "LABEL $STAND_IN_LABEL=\"debootstrap --variant=minbase bookworm: stands in for debian:bookworm-slim\"" \
        --change 'CMD ["bash"]' - "${IMAGE[debian]}" >/dev/null
    rm -rf "$root"
}

build_python() {
    local context
    context=$(context_with_ca)
    # The host's own build of this exact CPython, without its installed packages: pip and
    # setuptools come from ensurepip inside, as in the official image.
    local minor=${PYTHON_VERSION%.*}
    tar -C "$PYTHON_PREFIX" --exclude="lib/python$minor/site-packages/*" --exclude='__pycache__' \
        --exclude="lib/python$minor/test" --exclude="lib/python$minor/idlelib" \
        -czf "$context/python.tar.gz" "bin/python$minor" bin/python3 bin/python \
        "bin/python$minor-config" bin/python3-config "bin/pydoc$minor" include lib
    docker build --network host -q -t "${IMAGE[python]}" \
        --build-arg "PYTHON_VERSION=$PYTHON_VERSION" \
        -f docker/stand-ins/python-slim.Dockerfile "$context" >/dev/null
    rm -rf "$context"
}

build_tensorflow() {
    local context
    context=$(context_with_ca)
    docker build --network host -q -t "${IMAGE[tensorflow]}" \
        --build-arg "TENSORFLOW_VERSION=$TENSORFLOW_VERSION" \
        -f docker/stand-ins/tensorflow.Dockerfile "$context" >/dev/null
    rm -rf "$context"
}

build_postgres() {
    local context
    context=$(context_with_ca)
    cp docker/stand-ins/postgres-entrypoint.sh "$context/docker-entrypoint.sh"
    docker build --network host -q -t "${IMAGE[postgres]}" \
        -f docker/stand-ins/postgres.Dockerfile "$context" >/dev/null
    rm -rf "$context"
}

build_mlflow() {
    local context
    context=$(context_with_ca)
    docker build --network host -q -t "${IMAGE[mlflow]}" \
        --build-arg "PYTHON_IMAGE=${IMAGE[python]}" --build-arg "MLFLOW_VERSION=$MLFLOW_VERSION" \
        -f docker/stand-ins/mlflow.Dockerfile "$context" >/dev/null
    rm -rf "$context"
}

ensure() {
    local name=$1
    if [ -z "${IMAGE[$name]:-}" ]; then
        say "unknown base '$name'; choose from: ${!IMAGE[*]}"
        exit 2
    fi
    if present "${IMAGE[$name]}"; then
        say "${IMAGE[$name]} is present, reused"
        return
    fi
    [ -n "${NEEDS[$name]:-}" ] && ensure "${NEEDS[$name]}"
    local started=$SECONDS
    say "building ${IMAGE[$name]} (a local stand-in) ..."
    "build_$name"
    say "built ${IMAGE[$name]} in $((SECONDS - started)) s"
}

if ! docker info >/dev/null 2>&1; then
    say "no Docker engine answers; start one first (as root: dockerd --bridge=none --iptables=false &)"
    exit 1
fi
for name in "${@:-debian python tensorflow postgres mlflow}"; do
    for one in $name; do ensure "$one"; done
done
