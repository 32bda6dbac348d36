"""The venv's torch is the CPU build, explicitly: a local wheel when there is one, else PyTorch's CPU index.

On plain PyPI `torch==2.13.0` is the CUDA 13 build (several GB): a pin alone does not avoid it. `make -n`
prints the recipe without running it.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import REPO_ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _venv_recipe(*variables: str) -> str:
    return subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", ".venv/.installed", *variables],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _torch_line(recipe: str) -> str:
    lines = [line for line in recipe.splitlines() if "pip install" in line and "torch" in line]
    (line,) = [line for line in lines if " -e " not in line]
    return line


def test_a_local_cpu_wheel_is_installed_when_present(tmp_path: Path) -> None:
    wheel = tmp_path / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    wheel.write_bytes(b"")
    assert _torch_line(_venv_recipe(f"TORCH_WHEELS={tmp_path}")).endswith(f" {wheel}")


def test_without_a_local_wheel_the_cpu_build_comes_from_the_cpu_index(tmp_path: Path) -> None:
    line = _torch_line(_venv_recipe(f"TORCH_WHEELS={tmp_path}"))
    assert "--index-url https://download.pytorch.org/whl/cpu" in line
    assert line.endswith("torch==2.13.0+cpu")


def test_a_missing_python_is_named_before_anything_runs() -> None:
    recipe = _venv_recipe("PYTHON=/nonexistent/python3.11")
    first = recipe.splitlines()[0]
    assert "command -v /nonexistent/python3.11" in first
    assert "README's Prerequisites" in first
    done = subprocess.run(["sh", "-c", first], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "make: /nonexistent/python3.11 not found" in done.stderr
