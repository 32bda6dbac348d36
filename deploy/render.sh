#!/usr/bin/env bash
# Print a deployment description with its ${NAME} placeholders filled from deploy/config.env; a NAME already
# set in the environment wins. Only names config.env defines are replaced, so any other `$` stays as it is.
#   deploy/render.sh deploy/cloudrun/triton-service.yaml > /tmp/triton.yaml
set -euo pipefail
config="$(cd "$(dirname "$0")" && pwd)/config.env"
names=()
while IFS='=' read -r name value; do
  names+=("\${${name}}")
  [[ -n ${!name+set} ]] || export "${name}=${value}"
done < <(grep -E '^[A-Z_][A-Z0-9_]*=' "${config}")
envsubst "${names[*]}" <"$1"
