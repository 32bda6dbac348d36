"""Both model.py adapters against a stub triton_python_backend_utils (no server needed)."""

import importlib.util
import json
import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from fluxfill.inpaint import forwarding
from fluxfill.inpaint.config import parse_model_config
from fluxfill.inpaint.engine import InpaintEngine
from fluxfill.inpaint.offload import OffloadDecision
from fluxfill.inpaint.pipeline import LoadReport
from fluxfill.inpaint.service import FluxFillService
from fluxfill.inpaint.watchdog import StallWatchdog
from tests.support import MODEL_REPOSITORY, repository_parameters
from tests.unit import stub_pb_utils as pb
from tests.unit.fakes import PaintingDenoiser

FINAL = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def load_model_py(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    spec = importlib.util.spec_from_file_location(f"{name}_model", MODEL_REPOSITORY / name / "1" / "model.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def stream_module(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ModuleType]:
    pb.Logger.lines.clear()
    pb.MetricFamily.registry.clear()
    monkeypatch.setenv("FLUXFILL_FORWARDING_DIR", str(tmp_path / "cancel"))
    module = load_model_py("flux_fill_stream", monkeypatch)
    yield module
    # initialize() sends diffusers' and transformers' logs to Triton's: this process's, as they were.
    for library in (diffusers_logging, transformers_logging):
        for handler in list(logging.getLogger(library.__name__.split(".")[0]).handlers):
            if isinstance(handler, module._TritonLogHandler):
                library.remove_handler(handler)
        library.enable_default_handler()


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


def valid_tensors(steps: int = 3) -> dict[str, pb.Tensor]:
    mask = np.zeros((32, 48), np.uint8)
    mask[4:12, 4:12] = 255
    arrays = {
        "IMAGE": np.full((32, 48, 3), 100, np.uint8),
        "MASK": mask,
        "PROMPT": np.array([b"a cat"], dtype=object),
        "SEED": np.array([42], np.int64),
        "STEPS": np.array([steps], np.int32),
    }
    return {name: pb.Tensor(name, array) for name, array in arrays.items()}


def outputs(response: pb.InferenceResponse) -> dict[str, np.ndarray]:
    return {tensor.name(): tensor.as_numpy() for tensor in response.output_tensors()}


def error_sent(request: pb.InferenceRequest) -> pb.TritonError:
    """The error a stream reported, checking that the stream was then closed."""
    *_, (error_response, error_flags), (closing, closing_flags) = request.sender.sent
    assert (closing, closing_flags) == (None, FINAL)
    assert error_flags == 0
    assert error_response is not None
    error = error_response.error()
    assert error is not None
    return error


def metric_value(family: str, **labels: str) -> float:
    return next(m.value for m in pb.MetricFamily.registry[family].metrics if m.labels == labels)


@pytest.fixture
def stream_model(stream_module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(FluxFillService, "load", staticmethod(fake_load()))
    instance = stream_module.TritonPythonModel()
    instance.initialize(triton_args())
    return instance


def test_stream_sends_one_progress_response_per_step_then_the_final_image(stream_model: Any) -> None:
    request = pb.InferenceRequest(valid_tensors(steps=3))
    stream_model.execute([request])
    sent = request.sender.sent
    progress = [outputs(response) for response, flags in sent[:-1]]
    assert [(p["STEP"].tolist(), p["TOTAL_STEPS"].tolist()) for p in progress] == [
        ([1], [3]),
        ([2], [3]),
        ([3], [3]),
    ]
    assert all(flags == 0 for _, flags in sent[:-1])
    final, flags = sent[-1]
    assert flags == FINAL
    assert outputs(final)["IMAGE"].shape == (32, 48, 3)
    assert outputs(final)["SEED"].tolist() == [42]
    assert metric_value("fluxfill_requests_total", outcome="success") == 1


def test_a_final_response_that_never_leaves_is_a_stall(stream_model: Any) -> None:
    """The watchdog covers the whole request: a send hung in the stub's IPC after the run is caught too."""
    now, stalls = [0.0], []
    watchdog = StallWatchdog(10, on_stall=stalls.append, clock=lambda: now[0])
    stream_model._service.watchdog = watchdog
    request = pb.InferenceRequest(valid_tensors(steps=2))
    sending, released, recorded = threading.Event(), threading.Event(), request.sender.send

    def hanging_final_send(response: Any = None, flags: int = 0) -> None:
        if flags == FINAL:
            sending.set()
            released.wait(30)
        recorded(response, flags)

    request.sender.send = hanging_final_send  # type: ignore[method-assign]
    serving = threading.Thread(target=stream_model.execute, args=([request],))
    serving.start()
    try:
        assert sending.wait(10), "the run never ended"
        now[0] = 11.0
        assert watchdog.check()
        assert "last: sending the final response" in stalls[0]
    finally:
        released.set()
        serving.join(10)
    assert request.sender.sent[-1][1] == FINAL
    assert not watchdog.check(), "the request is over: nothing is watched"


def test_a_gauge_update_that_never_returns_is_a_stall(stream_model: Any) -> None:
    """The in-progress gauge's update after the final response is an IPC call to Triton too: hung, it held
    the instance with nothing in the watch (a CI run once saw a server "hold" a request for minutes)."""
    now, stalls = [0.0], []
    watchdog = StallWatchdog(10, on_stall=stalls.append, clock=lambda: now[0])
    stream_model._service.watchdog = watchdog
    gauge = stream_model._metrics.in_progress
    updating, released, recorded = threading.Event(), threading.Event(), gauge.increment

    def hanging_decrement(amount: float) -> None:
        if amount < 0:
            updating.set()
            released.wait(30)
        recorded(amount)

    gauge.increment = hanging_decrement
    serving = threading.Thread(target=stream_model.execute, args=([pb.InferenceRequest(valid_tensors(2))],))
    serving.start()
    try:
        assert updating.wait(10), "the request was never answered"
        now[0] = 11.0
        assert watchdog.check()
    finally:
        released.set()
        serving.join(10)
    assert metric_value("fluxfill_requests_in_progress") == 0
    assert not watchdog.check(), "the request is over: nothing is watched"


def test_invalid_request_gets_invalid_arg_and_the_next_one_succeeds(stream_model: Any) -> None:
    bad = valid_tensors()
    bad["MASK"] = pb.Tensor("MASK", np.zeros((5, 5), np.uint8))
    broken, good = pb.InferenceRequest(bad), pb.InferenceRequest(valid_tensors())
    stream_model.execute([broken, good])
    error = error_sent(broken)
    assert len(broken.sender.sent) == 2
    assert error.code() == pb.TritonError.INVALID_ARG
    assert error.message().startswith("MASK: must have shape")
    assert good.sender.sent[-1][0] is not None
    assert good.sender.sent[-1][0].error() is None
    assert metric_value("fluxfill_requests_total", outcome="invalid") == 1
    assert metric_value("fluxfill_requests_total", outcome="success") == 1


class GaugeAtFinalSend(pb.ResponseSender):
    """Notes the in-progress gauge as each request's last response leaves; `failing` sends raise."""

    def __init__(self, seen: list[float], failing: bool = False) -> None:
        super().__init__()
        self.seen, self.failing = seen, failing

    def send(self, response: pb.InferenceResponse | None = None, flags: int = 0) -> None:
        if self.failing:
            raise RuntimeError("the stub's IPC with Triton is gone")
        super().send(response, flags)
        if flags == FINAL:
            self.seen.append(metric_value("fluxfill_requests_in_progress"))


def test_requests_taken_together_count_in_progress_until_each_is_answered(stream_model: Any) -> None:
    """Triton's pending count drops when it hands requests to the instance: what the instance holds, still
    waiting its turn or running, is told by this gauge (and a run in its preprocessing shows no step)."""
    seen: list[float] = []
    bad = valid_tensors()
    bad["MASK"] = pb.Tensor("MASK", np.zeros((5, 5), np.uint8))
    requests = [
        pb.InferenceRequest(tensors, sender=GaugeAtFinalSend(seen))
        for tensors in (valid_tensors(), bad, valid_tensors())
    ]
    stream_model.execute(requests)
    assert seen == [3, 2, 1]
    assert metric_value("fluxfill_requests_in_progress") == 0


def test_requests_an_instance_gives_up_on_are_no_longer_counted_in_progress(stream_model: Any) -> None:
    seen: list[float] = []
    failing = pb.InferenceRequest(valid_tensors(), sender=GaugeAtFinalSend(seen, failing=True))
    never_served = pb.InferenceRequest(valid_tensors(), sender=GaugeAtFinalSend(seen))
    with pytest.raises(RuntimeError, match="IPC"):
        stream_model.execute([failing, never_served])
    assert metric_value("fluxfill_requests_in_progress") == 0


def test_caller_cancelling_the_stream_stops_the_run_within_a_step(stream_model: Any) -> None:
    request = pb.InferenceRequest(valid_tensors(steps=10), sender=pb.ResponseSender(cancel_after=2))
    stream_model.execute([request])
    error = error_sent(request)
    assert error.code() == pb.TritonError.CANCELLED
    assert "after step 2 of 10" in error.message()
    assert metric_value("fluxfill_requests_total", outcome="cancelled") == 1


def test_forwarder_cancel_flag_stops_the_run(stream_model: Any) -> None:
    request_id = forwarding.new_forwarded_id()
    forwarding.open_run(request_id)
    forwarding.request_cancel(request_id)
    request = pb.InferenceRequest(valid_tensors(), request_id=request_id)
    stream_model.execute([request])
    assert error_sent(request).code() == pb.TritonError.CANCELLED
    assert forwarding.take_error(request_id) == ("CANCELLED", "cancelled by the caller after step 0 of 3")
    forwarding.clear(request_id)


def test_direct_callers_leave_no_files_whatever_their_request_id(stream_model: Any) -> None:
    """1,000 invalid requests straight to flux_fill_stream, some with forwarder-like ids: nothing stays."""
    before = set(forwarding.channel_dir().iterdir()) if forwarding.channel_dir().exists() else set()
    for request_id in ("", "direct-1", forwarding.new_forwarded_id()):
        request = pb.InferenceRequest(valid_tensors(steps=0), request_id=request_id)
        stream_model.execute([request])
        assert error_sent(request).code() == pb.TritonError.INVALID_ARG
    after = set(forwarding.channel_dir().iterdir()) if forwarding.channel_dir().exists() else set()
    assert after == before


def test_time_limit_is_unavailable_with_deadline_message(stream_model: Any) -> None:
    tensors = valid_tensors(steps=5)
    tensors["TIMEOUT_S"] = pb.Tensor("TIMEOUT_S", np.array([1e-3], np.float32))
    request = pb.InferenceRequest(tensors)
    stream_model.execute([request])
    error = error_sent(request)
    assert error.code() == pb.TritonError.UNAVAILABLE
    assert error.message().startswith("deadline exceeded: stopped after step")
    assert metric_value("fluxfill_requests_total", outcome="timeout") == 1


def test_unexpected_failure_is_internal_and_logged(
    stream_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(stream_model._service, "run", explode)
    request = pb.InferenceRequest(valid_tensors())
    stream_model.execute([request])
    error = error_sent(request)
    assert error.code() == pb.TritonError.INTERNAL
    assert "RuntimeError: CUDA out of memory" in error.message()
    assert any(level == "error" and "CUDA out of memory" in line for level, line in pb.Logger.lines)
    assert metric_value("fluxfill_requests_total", outcome="error") == 1


def test_bad_parameter_fails_the_load_naming_it(stream_module: ModuleType) -> None:
    with pytest.raises(RuntimeError, match="flux_fill failed to load: parameter 'feather_pixels': must be"):
        stream_module.TritonPythonModel().initialize(triton_args(feather_pixels="wide"))


def test_missing_weights_fail_the_load_with_the_path(stream_module: ModuleType, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(RuntimeError, match=f"weights_dir '{missing}' is not a directory"):
        stream_module.TritonPythonModel().initialize(triton_args(weights_dir=str(missing)))


def test_test_model_is_announced_loudly(stream_module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FluxFillService, "load", staticmethod(fake_load(is_test_model=True)))
    stream_module.TritonPythonModel().initialize(triton_args())
    warnings = [line for level, line in pb.Logger.lines if level == "warn"]
    assert any("TINY TEST MODEL" in line and "noise" in line for line in warnings)


def test_library_warnings_reach_tritons_log_with_their_level(
    stream_module: ModuleType, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Their own handlers wrote bare text on the stub's stderr: an ERROR entry each in the JSON log."""
    monkeypatch.setattr(FluxFillService, "load", staticmethod(fake_load()))
    stream_module.TritonPythonModel().initialize(triton_args())
    capfd.readouterr()

    diffusers_logging.get_logger("diffusers.pipelines.flux").warning("a diffusers warning")
    transformers_logging.get_logger("transformers.tokenization_utils_base").warning("a transformers warning")
    diffusers_logging.get_logger("diffusers.models").info("below the libraries' level")

    assert [
        (level, line) for level, line in pb.Logger.lines if "diffusers" in line or "transformers" in line
    ] == [
        ("warn", "a diffusers warning"),
        ("warn", "a transformers warning"),
    ]
    assert capfd.readouterr().err == ""


def test_gpu_instance_loads_on_its_device(stream_module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FluxFillService, "load", staticmethod(fake_load()))
    instance = stream_module.TritonPythonModel()
    instance.initialize({**triton_args(), "model_instance_kind": "GPU", "model_instance_device_id": "3"})
    assert instance._service.report.device == "cuda:3"
    assert metric_value("fluxfill_model_info", device="cuda:3", dtype="float32", offload="none") == 1


@pytest.fixture
def forwarder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    monkeypatch.setenv("FLUXFILL_FORWARDING_DIR", str(tmp_path / "cancel"))
    monkeypatch.setattr(pb.InferenceRequest, "bls_handler", None)
    return load_model_py("flux_fill", monkeypatch).TritonPythonModel()


def progress_then_final(request: pb.InferenceRequest) -> list[pb.InferenceResponse]:
    image = next(t for t in request.inputs if t.name() == "IMAGE").as_numpy()
    step = [pb.Tensor("STEP", np.array([1], np.int32)), pb.Tensor("TOTAL_STEPS", np.array([1], np.int32))]
    final = [pb.Tensor("IMAGE", image), pb.Tensor("SEED", np.array([7], np.int64)), *step]
    return [pb.InferenceResponse(step), pb.InferenceResponse(final), pb.InferenceResponse()]


def test_forwarder_returns_the_final_image_and_seed(forwarder: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[pb.InferenceRequest] = []
    monkeypatch.setattr(
        pb.InferenceRequest, "bls_handler", lambda r: seen.append(r) or progress_then_final(r)
    )
    (response,) = forwarder.execute([pb.InferenceRequest(valid_tensors())])
    assert sorted(outputs(response)) == ["IMAGE", "SEED"]
    assert outputs(response)["SEED"].tolist() == [7]
    (inner,) = seen
    assert inner.model_name == "flux_fill_stream"
    assert sorted(t.name() for t in inner.inputs) == ["IMAGE", "MASK", "PROMPT", "SEED", "STEPS"]
    assert inner.request_id().startswith("fwd-")


def test_forwarder_passes_errors_on_with_their_code(forwarder: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    error = pb.InferenceResponse(error=pb.TritonError("MASK: must have shape", pb.TritonError.INVALID_ARG))
    monkeypatch.setattr(pb.InferenceRequest, "bls_handler", lambda _r: [error])
    (response,) = forwarder.execute([pb.InferenceRequest(valid_tensors())])
    assert response.error().code() == pb.TritonError.INVALID_ARG
    assert response.error().message() == "MASK: must have shape"


def test_forwarder_prefers_the_error_the_stream_recorded(
    forwarder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def stream(request: pb.InferenceRequest) -> Any:
        forwarding.record_error(
            request.request_id(), "UNAVAILABLE", "deadline exceeded: stopped after step 1"
        )
        # What this server build's BLS delivers: the progress, then an empty response instead of the error.
        return [pb.InferenceResponse([pb.Tensor("STEP", np.array([1], np.int32))]), pb.InferenceResponse()]

    monkeypatch.setattr(pb.InferenceRequest, "bls_handler", stream)
    (response,) = forwarder.execute([pb.InferenceRequest(valid_tensors())])
    assert response.error().code() == pb.TritonError.UNAVAILABLE
    assert response.error().message() == "deadline exceeded: stopped after step 1"
    assert not list(forwarding.channel_dir().iterdir()), "the forwarder cleans the channel up"


def test_forwarder_turns_caller_cancellation_into_a_flag(
    forwarder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags_seen: list[bool] = []

    def stream(request: pb.InferenceRequest) -> Any:
        yield pb.InferenceResponse([pb.Tensor("STEP", np.array([1], np.int32))])
        flags_seen.append(forwarding.is_cancel_requested(request.request_id()))
        yield pb.InferenceResponse(
            error=pb.TritonError("cancelled after step 1 of 9", pb.TritonError.CANCELLED)
        )

    monkeypatch.setattr(pb.InferenceRequest, "bls_handler", stream)
    (response,) = forwarder.execute([pb.InferenceRequest(valid_tensors(), cancelled=lambda: True)])
    assert flags_seen == [True]
    assert response.error().code() == pb.TritonError.CANCELLED
