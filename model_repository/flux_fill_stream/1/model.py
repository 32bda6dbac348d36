"""FLUX.1-Fill on Triton (decoupled): one progress response per step, then the image; holds the weights."""

import json
import logging
import traceback
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

# The core (fluxfill.inpaint) is imported in initialize() so that a missing package becomes a load
# failure with a clear reason rather than an import traceback.
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class _TritonLogHandler(logging.Handler):
    """Send the core's `logging` records to Triton's log."""

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)
        if record.levelno >= logging.ERROR:
            pb_utils.Logger.log_error(message)
        elif record.levelno >= logging.WARNING:
            pb_utils.Logger.log_warn(message)
        else:
            pb_utils.Logger.log_info(message)


def _library_logs_to(handler: logging.Handler) -> None:
    """diffusers' and transformers' warnings through Triton's log, each with its level: their own handlers
    wrote bare text on the stub's stderr, which the Triton image's JSON log makes an ERROR entry of."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.disable_default_handler()
        library.add_handler(handler)


def _int32(value: int) -> Any:
    return np.array([value], dtype=np.int32)


def _error(message: str, code: str) -> Any:
    # The core's error codes are named after TritonError's (INVALID_ARG, CANCELLED, UNAVAILABLE, ...).
    triton_code = getattr(pb_utils.TritonError, code, pb_utils.TritonError.INTERNAL)
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, triton_code))


class TritonPythonModel:
    """Runs each request to the end, streaming progress, stopping on cancel or time limit."""

    def initialize(self, args: dict[str, str]) -> None:
        """Parse config.pbtxt parameters, load the weights and warm up, or fail the load with the reason."""
        to_triton = _TritonLogHandler()
        core_logger = logging.getLogger("fluxfill")
        core_logger.addHandler(to_triton)
        core_logger.setLevel(logging.INFO)
        try:
            from fluxfill.inpaint import forwarding
            from fluxfill.inpaint.config import flatten_triton_parameters
            from fluxfill.inpaint.contract import INPUTS
            from fluxfill.inpaint.errors import InpaintError
            from fluxfill.inpaint.metrics import ModelMetrics, outcome_of
            from fluxfill.inpaint.service import FluxFillService
        except ImportError as error:
            raise RuntimeError(
                f"flux_fill cannot import its inpainting core ({error}); install fluxfill[model] "
                "into the Python environment that tritonserver's python backend uses"
            ) from error
        _library_logs_to(to_triton)
        device = "cpu"
        if args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args['model_instance_device_id']}"
        parameters = flatten_triton_parameters(json.loads(args["model_config"]))
        try:
            self._service = FluxFillService.load(parameters, device)
        except Exception as error:
            raise RuntimeError(f"flux_fill failed to load: {error}") from error
        self._input_names = [spec.name for spec in INPUTS]
        self._expected_errors = InpaintError
        self._outcome_of = outcome_of
        self._forwarding = forwarding
        self._metrics = ModelMetrics(pb_utils)
        report = self._service.report
        self._metrics.record_load(
            self._service.load_seconds, report.device, report.dtype, report.offload.mode
        )
        pb_utils.Logger.log_info(
            f"flux_fill ready on {report.device} ({report.dtype}, offload={report.offload.mode}: "
            f"{report.offload.reason}, transformer parameters={report.transformer_parameters}, "
            f"speedups: {', '.join(report.speedups) or 'none'}, "
            f"loaded and warmed up in {self._service.load_seconds:.1f} s)"
        )
        self._service.watchdog.start()
        if report.is_test_model:
            pb_utils.Logger.log_warn(
                "flux_fill is serving a TINY TEST MODEL with random weights: every output is noise. "
                "Set the weights_dir parameter to real FLUX.1-Fill weights for real edits."
            )

    def execute(self, requests: list[Any]) -> None:
        """Serve each request in turn; responses go through each request's sender."""
        # The whole request is watched, not only its run: reading its inputs, sending its responses and
        # updating the in-progress gauge go through the stub's IPC with Triton, which can hang as a step can.
        with self._service.watchdog.watching(), self._metrics.serving(len(requests)) as answered:
            for request in requests:
                with self._service.watchdog.watching():
                    self._serve(request)
                answered()

    def _serve(self, request: Any) -> None:
        sender = request.get_response_sender()
        request_id = request.request_id()
        inputs = {}
        for name in self._input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            inputs[name] = None if tensor is None else tensor.as_numpy()

        def cancelled() -> bool:
            return bool(sender.is_cancelled()) or self._forwarding.is_cancel_requested(request_id)

        # A preview is decoded only for callers that asked for it, and rides on its step's progress response.
        wants_preview = "PREVIEW" in request.requested_output_names()
        previews: list[Any] = []

        def progress(step: int, total: int) -> None:
            if not sender.is_cancelled():
                progress_tensors = [
                    pb_utils.Tensor("STEP", _int32(step)),
                    pb_utils.Tensor("TOTAL_STEPS", _int32(total)),
                ]
                if previews:
                    progress_tensors.append(pb_utils.Tensor("PREVIEW", previews.pop()))
                sender.send(pb_utils.InferenceResponse(output_tensors=progress_tensors))

        try:
            run = self._service.run(
                inputs,
                is_cancelled=cancelled,
                on_progress=progress,
                on_step_seconds=self._metrics.record_step,
                on_preview=previews.append if wants_preview else None,
            )
        except self._expected_errors as error:
            outcome, code, message = self._outcome_of(error), error.code, str(error)
        except Exception as error:  # one broken request must not take the instance down
            pb_utils.Logger.log_error(f"flux_fill internal error: {traceback.format_exc()}")
            outcome, code, message = "error", "INTERNAL", f"internal error: {type(error).__name__}: {error}"
        else:
            self._record("success")
            response = self._final_response(run)
            self._service.watchdog.alive("sending the final response")
            sender.send(response, flags=FINAL)
            return
        self._record(outcome)
        # After progress responses, this build's BLS drops an error response (and hangs its caller when the
        # error carries the FINAL flag): leave the error for the forwarder, send it, then close the stream.
        self._forwarding.record_error(request_id, code, message)
        sender.send(_error(message, code))
        sender.send(flags=FINAL)

    def _final_response(self, run: Any) -> Any:
        result = run.result
        self._metrics.record_run(
            (result.times.preprocess, result.times.denoise, result.times.postprocess),
            result.denoised_share,
            ran_model=result.denoised_box is not None,
        )
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("IMAGE", result.image),
                pb_utils.Tensor("SEED", np.array([result.seed], dtype=np.int64)),
                pb_utils.Tensor("STEP", _int32(run.total_steps)),
                pb_utils.Tensor("TOTAL_STEPS", _int32(run.total_steps)),
            ]
        )

    def _record(self, outcome: str) -> None:
        self._metrics.record_outcome(outcome)
        self._metrics.record_cache(self._service.cache_stats)
        self._metrics.record_gpu_peak(self._service.gpu_peak_bytes())
