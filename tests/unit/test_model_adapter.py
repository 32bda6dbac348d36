"""model.py turns tensors into requests and core errors into TritonError codes (no server needed)."""

import importlib.util
import json
import sys
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from fluxfill.inpaint.config import parse_model_config
from fluxfill.inpaint.engine import InpaintEngine
from fluxfill.inpaint.offload import OffloadDecision
from fluxfill.inpaint.pipeline import LoadReport
from fluxfill.inpaint.service import FluxFillService
from tests.support import MODEL_REPOSITORY, repository_parameters
from tests.unit import stub_pb_utils
from tests.unit.fakes import PaintingDenoiser

MODEL_PY = MODEL_REPOSITORY / "flux_fill" / "1" / "model.py"


@pytest.fixture
def model_module(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", stub_pb_utils)
    stub_pb_utils.Logger.lines.clear()
    spec = importlib.util.spec_from_file_location("flux_fill_model", MODEL_PY)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_load(is_test_model: bool = False) -> Any:
    def load(parameters: dict[str, str], device: str) -> FluxFillService:
        config = parse_model_config(parameters)
        report = LoadReport(device, "float32", OffloadDecision("none", "no GPU"), 123, is_test_model)
        return FluxFillService(InpaintEngine(PaintingDenoiser(), config), config, report)

    return load


def triton_args(**parameters: str) -> dict[str, str]:
    merged = {**repository_parameters(), **parameters}
    config = {"parameters": {key: {"string_value": value} for key, value in merged.items()}}
    return {"model_config": json.dumps(config), "model_instance_kind": "CPU", "model_instance_device_id": "0"}


def request(**tensors: np.ndarray) -> stub_pb_utils.InferenceRequest:
    return stub_pb_utils.InferenceRequest(
        {name: stub_pb_utils.Tensor(name, a) for name, a in tensors.items()}
    )


def valid_tensors() -> dict[str, np.ndarray]:
    mask = np.zeros((32, 48), np.uint8)
    mask[4:12, 4:12] = 255
    return {
        "IMAGE": np.full((32, 48, 3), 100, np.uint8),
        "MASK": mask,
        "PROMPT": np.array([b"a cat"], dtype=object),
        "SEED": np.array([42], np.int64),
    }


@pytest.fixture
def model(model_module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(FluxFillService, "load", staticmethod(fake_load()))
    instance = model_module.TritonPythonModel()
    instance.initialize(triton_args())
    return instance


def test_valid_request_returns_image_of_input_size_and_the_seed(model: Any) -> None:
    (response,) = model.execute([request(**valid_tensors())])
    assert not response.has_error()
    image, seed = response.output_tensors()
    assert (image.name(), seed.name()) == ("IMAGE", "SEED")
    assert image.as_numpy().shape == (32, 48, 3)
    assert seed.as_numpy().tolist() == [42]
    assert seed.as_numpy().dtype == np.int64


def test_each_request_in_a_batch_is_answered_on_its_own(model: Any) -> None:
    bad = valid_tensors()
    bad["MASK"] = np.zeros((5, 5), np.uint8)
    good, broken, good_again = model.execute(
        [request(**valid_tensors()), request(**bad), request(**valid_tensors())]
    )
    assert not good.has_error()
    assert broken.has_error()
    assert broken.error().code() == stub_pb_utils.TritonError.INVALID_ARG
    assert broken.error().message().startswith("MASK: must have shape")
    assert not good_again.has_error()


def test_missing_prompt_is_invalid_arg(model: Any) -> None:
    tensors = valid_tensors()
    del tensors["PROMPT"]
    (response,) = model.execute([request(**tensors)])
    assert response.error().code() == stub_pb_utils.TritonError.INVALID_ARG
    assert "PROMPT: is required" in response.error().message()


def test_unexpected_failure_is_internal_with_its_message_and_logged(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(model._service, "run", explode)
    (response,) = model.execute([request(**valid_tensors())])
    assert response.error().code() == stub_pb_utils.TritonError.INTERNAL
    assert "RuntimeError: CUDA out of memory" in response.error().message()
    assert any(
        level == "error" and "CUDA out of memory" in line for level, line in stub_pb_utils.Logger.lines
    )


def test_bad_parameter_fails_the_load_naming_it(model_module: ModuleType) -> None:
    with pytest.raises(RuntimeError, match="flux_fill failed to load: parameter 'feather_pixels': must be"):
        model_module.TritonPythonModel().initialize(triton_args(feather_pixels="wide"))


def test_missing_weights_fail_the_load_with_the_path(model_module: ModuleType, tmp_path: Any) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(
        RuntimeError, match=f"weights_dir '{missing}' is not a diffusers FLUX.1-Fill directory"
    ):
        model_module.TritonPythonModel().initialize(triton_args(weights_dir=str(missing)))


def test_test_model_is_announced_loudly(model_module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FluxFillService, "load", staticmethod(fake_load(is_test_model=True)))
    model_module.TritonPythonModel().initialize(triton_args())
    warnings = [line for level, line in stub_pb_utils.Logger.lines if level == "warn"]
    assert any("TINY TEST MODEL" in line and "noise" in line for line in warnings)


def test_gpu_instance_loads_on_its_device(model_module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FluxFillService, "load", staticmethod(fake_load()))
    args = {**triton_args(), "model_instance_kind": "GPU", "model_instance_device_id": "3"}
    instance = model_module.TritonPythonModel()
    instance.initialize(args)
    assert instance._service.report.device == "cuda:3"
