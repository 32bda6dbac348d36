"""What users deploy, built and started: both images from the shipped Dockerfiles, with podman.

The images are built by deploy/images/build-local.sh (a debootstrapped Debian base, a stand-in Triton base
made from the nvidia-pytriton wheel, CPU torch); where podman cannot be had, these tests are skipped with the
reason. Containers run on the host network and are always removed.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from fluxfill.client.local_emulators import GoogleEmulators
from fluxfill.client.triton_binary import free_port
from fluxfill.client.triton_supervisor import STUB_DIED_EXIT_CODE
from fluxfill.inpaint.contract import INPUTS, MODEL_NAME, STREAM_MODEL_NAME, contract_arrays
from fluxfill.inpaint.tiny import TinyModel
from fluxfill.inpaint.weights import directory_digest
from tests.integration.bridge.harness import JobSystem
from tests.support import REPO_ROOT

# Minutes: scheduled first (tests/conftest.py), on one worker, so the other runs the rest meanwhile.
# Building both images from nothing took 206 s alone and 255 s beside a second worker (2026-12-04,
# 2 cores): past the suite's 300 s on a busier machine, so the module's tests (the build is the first
# one's setup) get the build's own bound; each step inside has its own timeout.
pytestmark = [pytest.mark.integration, pytest.mark.long, pytest.mark.timeout(1500)]
BUILD = REPO_ROOT / "deploy" / "images" / "build-local.sh"
CONTAINERS_CONF = REPO_ROOT / "build" / "images" / "containers.conf"
BRIDGE_IMAGE, TRITON_IMAGE = "fluxfill-bridge:local", "fluxfill-triton:local"
SKIPPED = 3


def podman(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        env={"CONTAINERS_CONF": str(CONTAINERS_CONF), "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"},
    )


@pytest.fixture(scope="module")
def images() -> None:
    built = subprocess.run(
        ["bash", str(BUILD)],
        capture_output=True,
        text=True,
        timeout=1400,  # inside the module's 1500 s: a hung build is told as such
        check=False,
        env={**os.environ, "PYTHON": sys.executable},  # its pip fetches the nvidia-pytriton wheel
    )
    if built.returncode == SKIPPED:
        pytest.skip(built.stderr.strip().splitlines()[-1])
    assert built.returncode == 0, built.stderr[-4000:]


@pytest.fixture
def container_name() -> Iterator[str]:
    name = f"fluxfill-test-{uuid.uuid4().hex[:8]}"
    yield name
    podman("rm", "-f", "-t", "0", name)


def http_status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def wait_for_status(url: str, wanted: int, name: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if http_status(url) == wanted:
            return
        state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        assert state == "running", f"{name} is {state}:\n{logs(name)}"
        time.sleep(0.5)
    raise AssertionError(f"{url} never answered {wanted}:\n{logs(name)}")


def logs(name: str) -> str:
    """The container's log lines that say something: the table borders and blank lines left out."""
    result = podman("logs", name)
    lines = (result.stdout + result.stderr).splitlines()
    return "\n".join(line[:400] for line in lines if line.strip() and line[0] not in "|+")[-4000:]


def test_bridge_image_without_settings_exits_2_with_one_line(images: None) -> None:
    result = podman("run", "--rm", "--network", "host", BRIDGE_IMAGE)
    output = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 2, output
    assert len(output) == 1, output
    line = json.loads(output[0])
    assert line["message"] == "invalid settings"
    assert "FLUXFILL_BRIDGE_PROJECT: required" in line["problems"]


def test_bridge_image_answers_health_and_exits_0_on_sigterm(
    images: None, google_emulators: GoogleEmulators, google_clients: tuple[object, ...], container_name: str
) -> None:
    jobs = JobSystem(*google_clients)  # type: ignore[arg-type]
    jobs.create()
    port = free_port()
    settings = {
        "FLUXFILL_BRIDGE_PROJECT": jobs.project,
        "FLUXFILL_BRIDGE_SUBSCRIPTION": jobs.subscription_id,
        "FLUXFILL_BRIDGE_BUCKET": jobs.bucket,
        "FLUXFILL_BRIDGE_TRITON_URL": f"127.0.0.1:{free_port()}",
        "FLUXFILL_BRIDGE_HTTP_HOST": "127.0.0.1",
        "FLUXFILL_BRIDGE_HTTP_PORT": str(port),
        **google_emulators.environment(),
    }
    variables = [arg for key, value in settings.items() for arg in ("-e", f"{key}={value}")]
    started = podman("run", "-d", "--name", container_name, "--network", "host", *variables, BRIDGE_IMAGE)
    assert started.returncode == 0, started.stderr
    wait_for_status(f"http://127.0.0.1:{port}/healthz", 200, container_name, timeout_s=60)
    assert http_status(f"http://127.0.0.1:{port}/readyz") == 503, "no Triton: not ready"
    podman("kill", "--signal", "TERM", container_name)
    exit_code = podman("wait", container_name, timeout_s=30).stdout.strip()
    assert exit_code == "0", podman("logs", container_name).stdout[-3000:]
    assert "bridge stopped" in podman("logs", container_name).stdout


# Inside the shipped bridge image: a HEIC decodes, and a phone JPEG's edit is spliced by the bundled libjpeg.
RESULT_FORMATS_IN_IMAGE = """
import io
import numpy as np
from PIL import Image
from fluxfill.bridge.intake import read_photo
from fluxfill.bridge.result_image import encode_result
pixels = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
for kind in ("JPEG", "HEIF", "AVIF"):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=kind, quality=90)
    photo = read_photo(buffer.getvalue(), 10**6)
    edited = photo.pixels.copy()
    edited[8:24, 8:24] = 0
    result = encode_result(photo, edited)
    print(kind, photo.format, result.format, result.encoding)
"""


def test_bridge_image_splices_jpegs_and_reads_heic_and_avif(images: None) -> None:
    done = podman("run", "--rm", "--entrypoint", "python", BRIDGE_IMAGE, "-c", RESULT_FORMATS_IN_IMAGE)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:3] == [
        "JPEG JPEG jpeg dct_splice",
        "HEIF HEIF jpeg reencoded",
        "AVIF AVIF jpeg reencoded",
    ]


def start_triton(name: str, weights: Path, digest: str) -> tuple[int, int]:
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    started = podman(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "host",
        "--shm-size=1g",
        "-v",
        f"{weights}:/models/weights/FLUX.1-Fill-dev:ro",
        "-e",
        f"FLUXFILL_WEIGHTS_SHA256={digest}",
        TRITON_IMAGE,
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
    )
    assert started.returncode == 0, started.stderr
    return http_port, metrics_port


def readable_copy(source: Path, target: Path) -> Path:
    """The weights as a read-only bucket mount presents them: readable by the image's non-root user."""
    shutil.copytree(source, target)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


def test_triton_image_serves_the_tiny_model_and_answers_one_inference(
    images: None, tiny_model: TinyModel, container_name: str, tmp_path: Path
) -> None:
    weights = readable_copy(tiny_model.pipeline_dir, tmp_path / "weights")
    http_port, _ = start_triton(container_name, weights, directory_digest(weights))
    base = f"http://127.0.0.1:{http_port}"
    wait_for_status(f"{base}/v2/models/{STREAM_MODEL_NAME}/ready", 200, container_name, timeout_s=240)
    assert httpx.get(f"{base}/v2", timeout=5).json()["version"] == "2.51.0"
    image = np.random.default_rng(3).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    mask = np.zeros((64, 96), np.uint8)
    mask[16:40, 24:60] = 255
    client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}", network_timeout=120)
    inputs = []
    for name, array in contract_arrays(image, mask, "a hat", steps=2, seed=7).items():
        spec = next(spec for spec in INPUTS if spec.name == name)
        tensor = httpclient.InferInput(name, list(array.shape), spec.datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer(MODEL_NAME, inputs)
    client.close()
    edited = result.as_numpy("IMAGE")
    assert edited.shape == image.shape
    assert not np.array_equal(edited[mask >= 128], image[mask >= 128])
    shown = podman("logs", container_name).stdout
    assert "built for CUDA None; cuda available=False; device=none; NVIDIA driver=none" in shown
    # Started through NVIDIA's entrypoint (the stand-in base's, where NGC's image has it), which ran first and
    # passed the container's arguments on (the ports it answered on).
    assert 0 <= shown.find("stand-in for NVIDIA's Triton Server entrypoint") < shown.find("entrypoint: torch")
    # SIGTERM reaches tritonserver through the entrypoints and the supervisor: a clean stop inside Cloud
    # Run's 10 s before SIGKILL.
    stopping = time.monotonic()
    podman("kill", "--signal", "TERM", container_name)
    exit_code = podman("wait", container_name, timeout_s=30).stdout.strip()
    assert exit_code == "0", logs(container_name)[-3000:]
    assert time.monotonic() - stopping < 10


# Run in the container: SIGKILL the Python-backend stub serving flux_fill_stream (as an out-of-memory kill).
KILL_THE_STREAM_STUB = """
import os, pathlib, signal
for cmdline in pathlib.Path("/proc").glob("[0-9]*/cmdline"):
    arguments = cmdline.read_bytes().split(b"\\0")
    if arguments[0].endswith(b"triton_python_backend_stub") and b"/flux_fill_stream/" in arguments[1]:
        os.kill(int(cmdline.parent.name), signal.SIGKILL)
        print("killed", cmdline.parent.name)
"""


def test_triton_image_exits_when_a_ready_models_stub_dies(
    images: None, tiny_model: TinyModel, container_name: str, tmp_path: Path
) -> None:
    """Triton 2.51 alone stays live and ready with a dead stub and fails every request to its model; the
    image's supervisor stops it instead, so the platform starts a new container."""
    weights = readable_copy(tiny_model.pipeline_dir, tmp_path / "weights")
    http_port, _ = start_triton(container_name, weights, directory_digest(weights))
    wait_for_status(f"http://127.0.0.1:{http_port}/v2/health/ready", 200, container_name, timeout_s=240)
    time.sleep(6)  # one of the supervisor's checks (every 5 s) while ready: the stubs are watched

    killed = podman("exec", container_name, "python3", "-c", KILL_THE_STREAM_STUB)
    assert killed.stdout.startswith("killed"), killed.stdout + killed.stderr

    exit_code = podman("wait", container_name, timeout_s=90).stdout.strip()
    shown = logs(container_name)
    assert exit_code == str(STUB_DIED_EXIT_CODE), shown[-3000:]
    assert "stub of flux_fill_stream (pid" in shown


def test_triton_image_without_weights_reports_the_model_unavailable_with_its_reason(
    images: None, tmp_path: Path, container_name: str
) -> None:
    empty = tmp_path / "no-weights"
    empty.mkdir()
    http_port, _ = start_triton(container_name, empty, "0" * 64)
    base = f"http://127.0.0.1:{http_port}"
    wait_for_status(f"{base}/v2/health/live", 200, container_name, timeout_s=120)
    deadline = time.monotonic() + 120
    states: dict[str, dict[str, str]] = {}
    while time.monotonic() < deadline:
        index = httpx.post(f"{base}/v2/repository/index", json={}, timeout=5).json()
        states = {model["name"]: model for model in index}
        if states.get(STREAM_MODEL_NAME, {}).get("state") == "UNAVAILABLE":
            break
        time.sleep(0.5)
    stream = states[STREAM_MODEL_NAME]
    assert stream["state"] == "UNAVAILABLE", states
    assert "weights" in stream["reason"].lower(), stream
    assert http_status(f"{base}/v2/models/{STREAM_MODEL_NAME}/ready") == 400
    # The reason reaches Cloud Logging as an ERROR entry, not as text without a severity.
    output = podman("logs", container_name)
    entries = [
        json.loads(line) for line in (output.stdout + output.stderr).splitlines() if line.startswith("{")
    ]
    failures = [
        entry
        for entry in entries
        if entry.get("logger") == "tritonserver"
        and f"failed to load '{STREAM_MODEL_NAME}'" in entry["message"]
    ]
    # Triton says it twice: the reason as an error, then a short INFO line.
    assert "ERROR" in {entry["severity"] for entry in failures}, failures or logs(container_name)
