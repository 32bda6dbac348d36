"""requirements/*.txt: generated from the tested venv (deploy/lock.py); the bridge's has no model stack."""

import importlib.util
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement

from tests.support import REPO_ROOT

MODEL_STACK = {"torch", "torchao", "diffusers", "transformers", "accelerate", "safetensors", "gguf"}


def load_lock_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_lock", REPO_ROOT / "deploy" / "lock.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lock = load_lock_module()


def pins(image: str) -> dict[str, str]:
    text = (REPO_ROOT / "requirements" / f"{image}.txt").read_text()
    pairs = (line.split("==") for line in text.splitlines() if line and not line.startswith("#"))
    return {name: version for name, version in pairs}


@pytest.mark.parametrize("image", sorted(lock.IMAGES))
def test_lock_file_is_what_the_tested_venv_holds(image: str) -> None:
    path = REPO_ROOT / "requirements" / f"{image}.txt"
    assert path.read_text() == lock.render(image), f"{path} is stale: run `make lock`"


def test_bridge_image_gets_no_model_stack() -> None:
    bridge = set(pins("bridge"))
    assert not bridge & MODEL_STACK
    assert not {name for name in bridge if name.startswith(("nvidia-", "triton"))} - {"tritonclient"}
    assert {"tritonclient", "google-cloud-pubsub", "pydantic-settings"} <= bridge


def test_model_stack_is_pinned_as_pyproject_says() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    triton = pins("triton")
    for line in project["optional-dependencies"]["model"] + project["optional-dependencies"]["gpu"]:
        requirement = Requirement(line)
        assert requirement.specifier.contains(triton[requirement.name]), line


def test_a_requirement_the_venv_lacks_must_be_pinned_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lock, "project_requirements", lambda extras: [Requirement("no-such-dist==1.2.3")])
    assert lock.closure(("x",)) == ({}, ["no-such-dist==1.2.3"])
    monkeypatch.setattr(lock, "project_requirements", lambda extras: [Requirement("no-such-dist>=1")])
    with pytest.raises(LookupError, match="no-such-dist"):
        lock.closure(("x",))


def test_an_installed_version_outside_the_range_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lock, "project_requirements", lambda extras: [Requirement("numpy>=2")])
    with pytest.raises(LookupError, match="not satisfied"):
        lock.closure(("x",))


def test_check_mode_reports_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lock, "REQUIREMENTS_DIR", tmp_path)
    assert lock.main(["--check"]) == 1
    assert lock.main([]) == 0
    assert lock.main(["--check"]) == 0
