#!/usr/bin/env bash
# Stand-in for /opt/nvidia/nvidia_entrypoint.sh of NGC's images, which Dockerfile.triton starts through: as
# NVIDIA's does, it runs the parts in entrypoint.d beside it (*.txt printed, *.sh sourced, in name order),
# then execs the command it was given (bash without one). NVIDIA's parts also turn on CUDA forward
# compatibility; the stand-in has no CUDA, so its one part only says that it ran.
set -euo pipefail
parts=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/entrypoint.d
shopt -s nullglob
for part in "${parts}"/*.txt "${parts}"/*.sh; do
  case ${part} in
    *.txt) cat "${part}" ;;
    *.sh) source "${part}" ;;
  esac
done
shopt -u nullglob
(($# > 0)) || set -- bash
exec "$@"
