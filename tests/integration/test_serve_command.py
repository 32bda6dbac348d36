"""`fluxfill serve`: READY with the endpoints, a clean stop on SIGTERM, the model's reason on failure."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fluxfill.client.process_groups import live_processes
from fluxfill.client.triton_binary import free_port
from fluxfill.inpaint.tiny import TinyModel
from tests.support import MODEL_REPOSITORY

pytestmark = pytest.mark.integration
FLUXFILL = Path(sys.executable).parent / "fluxfill"


def serve(*args: str) -> subprocess.Popen[str]:
    ports = [f"--{name}-port={free_port()}" for name in ("http", "grpc", "metrics")]
    argv = [str(FLUXFILL), "serve", f"--model-repository={MODEL_REPOSITORY}", *ports, *args]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_serve_reports_ready_and_stops_on_sigterm(tiny_model: TinyModel) -> None:
    process = serve(f"--weights-dir={tiny_model.pipeline_dir}", "--param=warmup_steps=0")
    assert process.stdout is not None
    line = process.stdout.readline()
    assert "flux_fill and flux_fill_stream READY" in line
    assert "grpc 127.0.0.1:" in line
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)
    assert process.returncode == 0


def descendants(pid: int) -> list[int]:
    parents = {child: parent for child, (parent, _) in live_processes().items()}
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def test_serve_exits_3_when_the_models_stub_dies(tiny_model: TinyModel) -> None:
    """Triton alone would go on serving a model that fails every request; serve's supervisor ends it."""
    process = serve(f"--weights-dir={tiny_model.pipeline_dir}", "--param=warmup_steps=0")
    assert process.stdout is not None
    assert "READY" in process.stdout.readline()
    time.sleep(2)  # a check of the supervisor's while ready (every second)
    (stub,) = [
        pid
        for pid in descendants(process.pid)
        if b"/flux_fill_stream/1/model.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    os.kill(stub, signal.SIGKILL)

    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 3
    assert "tritonserver exited with code 70" in stderr
    assert "stub of flux_fill_stream (pid" in stderr


def test_serve_exits_3_with_the_models_reason(tmp_path: Path) -> None:
    started = time.monotonic()
    # Through --param the command line does not check the directory first: the model's own check reports it.
    process = serve("--param", f"weights_dir={tmp_path / 'missing'}")
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 3
    assert "flux_fill_stream failed to load" in stderr
    assert f"weights_dir '{tmp_path / 'missing'}' is not a directory" in stderr
    assert "Traceback" not in stderr.split("At:")[0]
    assert time.monotonic() - started < 60


def test_serve_refuses_a_bad_parameter_argument() -> None:
    process = serve("--param", "no-equals-sign")
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 2
    assert "expected KEY=VALUE" in stderr
    assert len(stderr.strip().splitlines()) <= 2  # usage line and the error, no traceback
