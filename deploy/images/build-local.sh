#!/usr/bin/env bash
# Build both images on this machine, as shipped, without Docker Hub or NGC (see ../shared FACTS: podman, a
# debootstrapped Debian 12 base, a stand-in Triton base from the nvidia-pytriton wheel; CPU torch).
# Idempotent: the bases are made once, the images rebuilt from podman's layer cache.
#   deploy/images/build-local.sh      # exit 0: fluxfill-bridge:local and fluxfill-triton:local exist
#                                     # exit 3: podman cannot be had here (the reason on stderr)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work=${FLUXFILL_IMAGES_WORK:-${root}/build/images}
mkdir -p "${work}"
log() { echo "images: $*" >&2; }

if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
  if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
    log "SKIP: podman and debootstrap are missing and cannot be installed here (needs root and apt-get)"
    exit 3
  fi
  log "installing podman, runc and debootstrap"
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends podman runc debootstrap; } >"${work}/apt.log" 2>&1; then
    log "SKIP: podman cannot be installed: $(tail -n 3 "${work}/apt.log" | tr '\n' ' ')"
    exit 3
  fi
fi

# crun fails here (rlimits, hybrid cgroups): runc, and limits podman can set.
export CONTAINERS_CONF=${work}/containers.conf
cat >"${CONTAINERS_CONF}" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
CONF

# Build-time only: this host's CA bundle (HTTPS goes through a proxy with its own CA) and local wheels
# (the CPU torch); neither lands in an image.
ca=/etc/ssl/certs/ca-certificates.crt
cat >"${work}/pip.conf" <<CONF
[global]
cert = /run/host-ca/ca.crt
find-links = /opt/wheels
CONF
mounts=(-v "${ca}:/run/host-ca/ca.crt:ro" -v "${work}/pip.conf:/etc/pip.conf:ro")
[[ -d /opt/wheels ]] && mounts+=(-v /opt/wheels:/opt/wheels:ro)
build() { podman build --format docker --network host --pull=never "${mounts[@]}" "$@"; }

debian=docker.io/library/debian:12.12-slim
if ! podman image exists "${debian}"; then
  mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
  mirror=${mirror:-http://deb.debian.org/debian}
  log "making ${debian} with debootstrap from ${mirror}"
  rm -rf "${work}/rootfs"
  debootstrap --variant=minbase bookworm "${work}/rootfs" "${mirror}" >"${work}/debootstrap.log" 2>&1
  rm -rf "${work}/rootfs"/usr/share/{doc,man,locale} "${work}/rootfs"/var/lib/apt/lists/* "${work}/rootfs"/var/cache/apt/*
  tar -C "${work}/rootfs" -cf - . | podman import --change 'CMD ["bash"]' - "${debian}" >/dev/null
  rm -rf "${work}/rootfs"
fi

# The stand-in is made again whenever its recipe changes (a base made by an older recipe would test the
# images against a layout NGC's no longer matches): the recipe's digest is the image's label.
triton_base=nvcr.io/nvidia/tritonserver:24.10-py3
standin=${root}/deploy/images
version=$(sed -n 's/.*"nvidia-pytriton==\([^"]*\)".*/\1/p' "${root}/pyproject.toml")
recipe=$(cat "${standin}/triton-standin.Containerfile" "${standin}/nvidia_entrypoint.sh" <(echo "${version}") |
  sha256sum | cut -c1-16)
made=$(podman image inspect --format '{{ index .Labels "fluxfill.standin.recipe" }}' "${triton_base}" 2>/dev/null || true)
if [[ ${made} != "${recipe}" ]]; then
  log "making the stand-in ${triton_base} from the nvidia-pytriton wheel (recipe ${recipe})"
  rm -rf "${work}/standin" && mkdir -p "${work}/standin"
  "${PYTHON:-python3}" -m pip download --quiet --no-deps --dest "${work}/standin" "nvidia-pytriton==${version}"
  cp "${standin}/nvidia_entrypoint.sh" "${work}/standin/"
  build -f "${standin}/triton-standin.Containerfile" --label "fluxfill.standin.recipe=${recipe}" \
    -t "${triton_base}" "${work}/standin"
fi

log "building fluxfill-bridge:local"
build -f "${root}/Dockerfile.bridge" -t fluxfill-bridge:local "${root}" >"${work}/bridge-build.log" 2>&1 ||
  { tail -n 40 "${work}/bridge-build.log" >&2; exit 1; }
log "building fluxfill-triton:local (CPU torch)"
build -f "${root}/Dockerfile.triton" --build-arg TORCH_CUDA=cpu --build-arg TORCH_INDEX_URL=https://pypi.org/simple \
  -t fluxfill-triton:local "${root}" >"${work}/triton-build.log" 2>&1 ||
  { tail -n 40 "${work}/triton-build.log" >&2; exit 1; }
podman image prune -f >/dev/null 2>&1 || true
log "built fluxfill-bridge:local and fluxfill-triton:local"
