"""`make demo` stays green: the demo script runs both paths and writes images of the photo's size."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.integration.conftest import TINY_MODEL_DIR
from tests.support import REPO_ROOT

pytestmark = pytest.mark.integration


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_demo_inpaints_directly_and_through_the_job_path(tmp_path: Path) -> None:
    output = tmp_path / "chelsea-inpainted.png"
    argv = [sys.executable, str(REPO_ROOT / "demo" / "run_demo.py"), f"--tiny-model={TINY_MODEL_DIR}"]
    done = subprocess.run(
        [*argv, f"--output={output}"], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    photo = read_rgb(REPO_ROOT / "demo" / "chelsea.png")
    for name in ("chelsea-inpainted.png", "chelsea-job-edited.png"):
        result = read_rgb(tmp_path / name)
        assert result.shape == photo.shape
        unchanged = np.mean(np.all(result == photo, axis=2))
        assert 0.8 < unchanged < 1.0, f"{name}: {unchanged:.1%} of pixels unchanged"
    with Image.open(tmp_path / "chelsea-job-preview.jpg") as preview:
        assert max(preview.size) <= 512
    assert "job done" in done.stdout


def test_demo_without_the_emulators_says_so_before_it_starts(tmp_path: Path) -> None:
    output = tmp_path / "chelsea-inpainted.png"
    argv = [sys.executable, str(REPO_ROOT / "demo" / "run_demo.py"), f"--tiny-model={TINY_MODEL_DIR}"]
    environment = {**os.environ, "FLUXFILL_CLOUD_SDK": str(tmp_path / "no-sdk")}
    done = subprocess.run(
        [*argv, f"--output={output}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=environment,
    )
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("demo failed: the Pub/Sub emulator is missing")
    assert "FLUXFILL_CLOUD_SDK" in lines[0]
    assert not output.exists()  # nothing half-done: the first inpaint did not run either
