"""deploy/triton/entrypoint.sh: the weights digest reaches `weights_sha256`, and Triton starts as intended."""

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import MODEL_REPOSITORY, REPO_ROOT, read_model_config
from tests.unit.deploy.support import (
    IMAGE_VARIABLES_LINE,
    TRITON_ENTRYPOINT,
    TRITON_GRPC_PORT,
    TRITON_HTTP_PORT,
    TRITON_METRICS_PORT,
    image_variables,
)

DIGEST = "0123456789abcdef" * 4


def run_entrypoint(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run the entrypoint with a fake tritonserver that records its arguments; the run and the copy."""
    fake = tmp_path / "tritonserver"
    fake.write_text(
        '#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGV_FILE"\n'
        # A line as tritonserver logs one that matters.
        """echo 'E1205 16:43:06.884936 24802 model_lifecycle.cc:642] "failed to load: no weights"' >&2\n"""
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    repository = tmp_path / "served" / "model_repository"
    environment = {
        # The image's python3 is the venv's, with fluxfill installed: the supervisor runs on it.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "TRITONSERVER": str(fake),
        "ARGV_FILE": str(tmp_path / "argv"),
        "FLUXFILL_MODEL_REPOSITORY_SOURCE": str(MODEL_REPOSITORY),
        "FLUXFILL_MODEL_REPOSITORY": str(repository),
        "FLUXFILL_FORWARDING_DIR": str(tmp_path / "forwarding"),
        **env,
    }
    result = subprocess.run(
        ["bash", str(TRITON_ENTRYPOINT), "--log-verbose=1"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result, repository


def served_parameters(repository: Path) -> dict[str, str]:
    config = read_model_config(repository / "flux_fill_stream" / "config.pbtxt")
    return {key: value.string_value for key, value in config.parameters.items()}


def test_weights_digest_becomes_the_weights_sha256_parameter(tmp_path: Path) -> None:
    result, repository = run_entrypoint(tmp_path, FLUXFILL_WEIGHTS_SHA256=DIGEST)
    assert result.returncode == 0, result.stderr
    shipped = served_parameters(MODEL_REPOSITORY)
    served = served_parameters(repository)
    assert served["weights_sha256"] == DIGEST
    # Nothing else changes, and the image's own copy is left as it is.
    assert {k: v for k, v in served.items() if k != "weights_sha256"} == {
        k: v for k, v in shipped.items() if k != "weights_sha256"
    }
    assert shipped["weights_sha256"] == ""


def test_gguf_file_is_set_when_given(tmp_path: Path) -> None:
    result, repository = run_entrypoint(
        tmp_path, FLUXFILL_WEIGHTS_SHA256=DIGEST, FLUXFILL_GGUF_FILE="/models/weights/flux-fill-q8_0.gguf"
    )
    assert result.returncode == 0, result.stderr
    assert served_parameters(repository)["gguf_file"] == "/models/weights/flux-fill-q8_0.gguf"


@pytest.mark.parametrize("digest", ["", "abc", DIGEST.upper(), DIGEST + "0", DIGEST[:-1] + '"'])
def test_no_start_without_a_valid_digest(tmp_path: Path, digest: str) -> None:
    result, _ = run_entrypoint(tmp_path, FLUXFILL_WEIGHTS_SHA256=digest)
    assert result.returncode == 2
    [said] = entries(result.stderr, "entrypoint")  # why the container exits, as an ERROR entry
    assert said["severity"] == "ERROR"
    assert str(said["message"]).startswith("entrypoint: FLUXFILL_WEIGHTS_SHA256 must be the weights' sha256")
    assert not (tmp_path / "argv").exists()


def test_tritonserver_flags(tmp_path: Path) -> None:
    result, repository = run_entrypoint(tmp_path, FLUXFILL_WEIGHTS_SHA256=DIGEST)
    assert result.returncode == 0, result.stderr
    argv = (tmp_path / "argv").read_text().splitlines()
    assert f"--model-repository={repository}" in argv
    assert "--exit-on-error=false" in argv
    assert f"--http-port={TRITON_HTTP_PORT}" in argv
    assert f"--grpc-port={TRITON_GRPC_PORT}" in argv
    assert f"--metrics-port={TRITON_METRICS_PORT}" in argv
    assert "--allow-gpu-metrics=true" in argv
    backend = {a.split("=", 1)[1] for a in argv if a.startswith("--backend-config=")}
    # Shared memory sized for ~1 MP requests: at least 16 MiB (about two requests with forwarding copies).
    sizes = {b.split("=")[0]: int(b.split("=")[1]) for b in backend if b.startswith("python,shm-")}
    assert sizes["python,shm-default-byte-size"] >= 16 * 2**20
    assert sizes["python,shm-growth-byte-size"] >= 16 * 2**20
    # Extra arguments are passed on, last.
    assert argv[-1] == "--log-verbose=1"


def entries(output: str, logger: str) -> list[dict[str, object]]:
    """The JSON entries of one logger among a run's output lines (Cloud Logging's reading of them)."""
    parsed = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [entry for entry in parsed if entry.get("logger") == logger]


def test_start_reports_torchs_cuda_build_and_whether_it_sees_a_gpu(tmp_path: Path) -> None:
    result, _ = run_entrypoint(tmp_path, FLUXFILL_WEIGHTS_SHA256=DIGEST, FLUXFILL_PYTHON=sys.executable)
    assert result.returncode == 0, result.stderr
    # This machine's torch is the CPU build: no CUDA, no GPU, and it says so before tritonserver starts, as a
    # warning.
    [reported] = entries(result.stdout, "entrypoint")
    assert str(reported["message"]).startswith("entrypoint: torch 2.")
    assert "built for CUDA None; cuda available=False; device=none" in str(reported["message"])
    assert reported["severity"] == "WARNING"


def test_tritonservers_log_lines_reach_cloud_logging_with_their_severity(tmp_path: Path) -> None:
    result, _ = run_entrypoint(tmp_path, FLUXFILL_WEIGHTS_SHA256=DIGEST)
    assert result.returncode == 0, result.stderr
    assert entries(result.stderr, "tritonserver") == [
        {
            "severity": "ERROR",
            "message": "failed to load: no weights",
            "logger": "tritonserver",
            "logging.googleapis.com/sourceLocation": {"file": "model_lifecycle.cc", "line": "642"},
        }
    ]


@pytest.mark.parametrize(
    ("version_file", "driver"),
    [
        # /proc/driver/nvidia/version as an L4 on Cloud Run shows it (R535).
        (
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01  Sun May 12 19:39:15 UTC 2024\n"
            "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n",
            "535.183.01",
        ),
        ("not what the driver writes\n", "unknown"),
        (None, "none"),  # no NVIDIA driver in the machine
    ],
)
def test_start_reports_the_hosts_nvidia_driver(tmp_path: Path, version_file: str | None, driver: str) -> None:
    """The compatibility the image runs in depends on it: R535 runs this CUDA 12.6 image only through one."""
    path = tmp_path / "driver-version"
    if version_file is not None:
        path.write_text(version_file)
    result, _ = run_entrypoint(
        tmp_path,
        FLUXFILL_WEIGHTS_SHA256=DIGEST,
        FLUXFILL_PYTHON=sys.executable,
        FLUXFILL_DRIVER_VERSION_FILE=str(path),
    )
    assert result.returncode == 0, result.stderr
    [reported] = entries(result.stdout, "entrypoint")
    assert str(reported["message"]).endswith(f"device=none; NVIDIA driver={driver}")


def test_start_goes_on_when_torch_cannot_be_imported(tmp_path: Path) -> None:
    result, _ = run_entrypoint(tmp_path, FLUXFILL_WEIGHTS_SHA256=DIGEST, FLUXFILL_PYTHON="/bin/false")
    assert result.returncode == 0
    [said] = entries(result.stderr, "entrypoint")
    assert (said["severity"], said["message"]) == (
        "WARNING",
        "entrypoint: torch cannot be imported: the model will say why",
    )
    assert (tmp_path / "argv").exists()


@pytest.mark.parametrize(
    "misspelt", ["FLUXFILL_GGUF_FIL", "FLUXFILL_EXIT_TIMEOUT", "fluxfill_weights_sha256"]
)
def test_no_start_with_a_variable_the_image_does_not_read(tmp_path: Path, misspelt: str) -> None:
    """A misspelt FLUXFILL_GGUF_FILE served the bf16 transformer instead, and a misspelt exit timeout kept
    25 s where Cloud Run kills at 10: both without a word."""
    result, _ = run_entrypoint(tmp_path, FLUXFILL_WEIGHTS_SHA256=DIGEST, **{misspelt: "x"})
    assert result.returncode == 2
    [said] = entries(result.stderr, "entrypoint")
    assert said["severity"] == "ERROR"
    assert str(said["message"]).startswith(f"entrypoint: {misspelt} is no variable of this image (it reads ")
    assert not (tmp_path / "argv").exists()


def test_every_variable_the_image_reads_is_one_the_entrypoint_lets_through() -> None:
    """The entrypoint's list against what its parts read (itself, the supervisor, the model's code)."""
    sources = [TRITON_ENTRYPOINT, *(REPO_ROOT / "client").glob("triton_*.py")]
    sources += [*(REPO_ROOT / "inpaint").glob("*.py"), *(REPO_ROOT / "model_repository").glob("*/1/model.py")]
    texts = [IMAGE_VARIABLES_LINE.sub("", path.read_text()) for path in sources]  # the list is no reader
    read = {name for text in texts for name in re.findall(r"\bFLUXFILL_[A-Z0-9_]*[A-Z0-9]", text)}
    assert image_variables() == read
