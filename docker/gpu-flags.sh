#!/usr/bin/env bash
# Print the `docker run` flags that give a container this host's GPUs, and say on stderr, in
# one line, which device the container will use. GPUS=all|none overrides the detection.
#   docker run $(bash docker/gpu-flags.sh) ...
set -euo pipefail
choice=${GPUS:-auto}
if [ "$choice" = auto ]; then
    choice=none
    # --gpus needs NVIDIA's container toolkit (its runtime or its hook) and a GPU it can see.
    if { docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia \
        || command -v nvidia-container-runtime-hook >/dev/null; } \
        && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
        choice=all
    fi
fi
case "$choice" in
    none)
        echo "docker: no NVIDIA container runtime and GPU on this host; the container trains on the CPU" >&2 ;;
    all)
        echo "docker: the container uses this host's GPUs ($(nvidia-smi -L 2>/dev/null | wc -l) found, --gpus all)" >&2
        echo "--gpus all" ;;
    *)
        echo "docker: GPUS=$choice is not one of auto, all, none" >&2
        exit 2 ;;
esac
