#!/usr/bin/env bash
# Start Triton on a writable copy of the model repository whose flux_fill_stream `weights_sha256` parameter
# holds FLUXFILL_WEIGHTS_SHA256: the model hashes the mounted weights and refuses to load on a mismatch,
# so a wrong or half-copied mirror never serves. Extra arguments go to tritonserver.
set -euo pipefail

# say SEVERITY MESSAGE: one JSON entry on stderr, as Cloud Logging reads the supervisor's (plain text has no
# severity on Cloud Run); plain text should python3 itself fail.
say() {
  python3 -c 'import json, sys; print(json.dumps({"severity": sys.argv[1], "message": "entrypoint: " + sys.argv[2], "logger": "entrypoint"}))' "$1" "$2" >&2 ||
    echo "entrypoint: $2" >&2
}
die() { say ERROR "$*"; exit 2; }

# Set one string parameter of a config.pbtxt in place; fails unless the key occurs exactly once.
set_parameter() {
  local config=$1 key=$2 value=$3
  local pattern="(key: *\"${key}\", *value: *\{ *string_value: *)\"[^\"]*\""
  [[ $(grep -cE "${pattern}" "${config}") == 1 ]] || die "${config}: no single '${key}' parameter"
  sed -E -i "s|${pattern}|\\1\"${value}\"|" "${config}"
}

# Every FLUXFILL_* variable this image reads (the entrypoint, the supervisor, the model's code): any other is
# refused, since a misspelt one left its default in force without a word (a FLUXFILL_GGUF_FILE served the bf16
# transformer instead; an exit timeout kept 25 s where Cloud Run kills at 10).
IMAGE_VARIABLES="FLUXFILL_WEIGHTS_SHA256 FLUXFILL_GGUF_FILE FLUXFILL_EXIT_TIMEOUT_S FLUXFILL_STUB_CHECK_S FLUXFILL_MODEL_REPOSITORY_SOURCE FLUXFILL_MODEL_REPOSITORY FLUXFILL_FORWARDING_DIR FLUXFILL_PYTHON FLUXFILL_DRIVER_VERSION_FILE"
while read -r name; do
  [[ " ${IMAGE_VARIABLES} " == *" ${name} "* ]] ||
    die "${name} is no variable of this image (it reads ${IMAGE_VARIABLES// /, })"
done < <(compgen -e | grep -i '^fluxfill_' || true)

digest=${FLUXFILL_WEIGHTS_SHA256:-}
[[ ${digest} =~ ^[0-9a-f]{64}$ ]] ||
  die "FLUXFILL_WEIGHTS_SHA256 must be the weights' sha256 (64 hex digits; \`fluxfill weights-digest PATH\`)"
source_repository=${FLUXFILL_MODEL_REPOSITORY_SOURCE:-/opt/fluxfill/model_repository}
repository=${FLUXFILL_MODEL_REPOSITORY:-/tmp/fluxfill/model_repository}

rm -rf "${repository}"
mkdir -p "$(dirname "${repository}")" "${FLUXFILL_FORWARDING_DIR:-/tmp/fluxfill/forwarding}"
cp -r "${source_repository}" "${repository}"
config="${repository}/flux_fill_stream/config.pbtxt"
set_parameter "${config}" weights_sha256 "${digest}"
# Optional GGUF transformer inside the mounted weights; its own sha256 is then the digest.
if [[ -n ${FLUXFILL_GGUF_FILE:-} ]]; then
  [[ ${FLUXFILL_GGUF_FILE} =~ ^[A-Za-z0-9_./-]+$ ]] || die "FLUXFILL_GGUF_FILE has unexpected characters"
  set_parameter "${config}" gguf_file "${FLUXFILL_GGUF_FILE}"
fi

# Say which CUDA build of torch this is, whether it sees a GPU and the host's driver, before anything else can
# hide it: a driver too old for the build shows here as available=False, not as a slow CPU run later.
# A JSON entry, as Cloud Logging reads the supervisor's (WARNING when no GPU is seen).
"${FLUXFILL_PYTHON:-python3}" - <<'PY' || say WARNING "torch cannot be imported: the model will say why"
import json, os, re
import torch
cuda = torch.cuda.is_available()
device = torch.cuda.get_device_name(0) if cuda else "none"
try:
    with open(os.environ.get("FLUXFILL_DRIVER_VERSION_FILE", "/proc/driver/nvidia/version")) as file:
        found = re.search(r"Kernel Module\s+([0-9.]+)", file.read())
    driver = found.group(1) if found else "unknown"
except OSError:
    driver = "none"
message = (f"entrypoint: torch {torch.__version__} built for CUDA {torch.version.cuda}; "
           f"cuda available={cuda}; device={device}; NVIDIA driver={driver}")
print(json.dumps({"severity": "INFO" if cuda else "WARNING", "message": message, "logger": "entrypoint"}),
      flush=True)
PY

# --exit-on-error=false: a model that fails initialize (e.g. a digest mismatch) leaves the server up with the
#   reason in the repository index and /v2/models/flux_fill_stream/ready at 400, so the startup probe fails
#   and the platform restarts the container, rather than a crash loop that hides the reason.
# Python-backend shared memory: a ~1 MP request is ~7 MB of tensors (~14 MB with flux_fill's forwarded copy);
#   64 MiB per instance holds several without growing, and growth comes in 64 MiB steps for large photos
#   (/dev/shm is mounted at 2 GiB by the manifests).
# stub-timeout-seconds: a stub moving a large tensor under GPU load is not declared dead after the 30 s default.
# exit-timeout-secs: below Cloud Run's and the GKE pod's termination grace, so in-flight runs end cleanly.
# Under fluxfill.client.triton_supervisor: it passes signals on and stops Triton when a ready model's stub dies
#   (Triton 2.51 would stay live and ready and fail every request), so the container exits and is restarted.
# --json-logs: Triton's glog lines and the stubs' output as JSON entries with a severity (Cloud Logging gives
#   plain text none on Cloud Run, and ERROR to every stderr line on GKE).
exec python3 -m fluxfill.client.triton_supervisor --json-logs "${TRITONSERVER:-tritonserver}" \
  --model-repository="${repository}" \
  --exit-on-error=false \
  --strict-readiness=true \
  --http-port=8000 \
  --grpc-port=8001 \
  --metrics-port=8002 \
  --allow-metrics=true \
  --allow-gpu-metrics=true \
  --backend-config=python,shm-default-byte-size=67108864 \
  --backend-config=python,shm-growth-byte-size=67108864 \
  --backend-config=python,stub-timeout-seconds=120 \
  --exit-timeout-secs="${FLUXFILL_EXIT_TIMEOUT_S:-25}" \
  "$@"
