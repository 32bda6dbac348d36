"""Triton Python-backend adapter for FLUX.1-Fill: tensors to a request, errors to TritonError codes."""

import json
import logging
import traceback
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

# The core (fluxfill.inpaint) is imported in initialize() so that a missing package becomes a load
# failure with a clear reason rather than an import traceback.


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


class TritonPythonModel:
    """FLUX.1-Fill inpainting, one response per request."""

    def initialize(self, args: dict[str, str]) -> None:
        """Parse config.pbtxt parameters and load the weights, or fail the load with the reason."""
        core_logger = logging.getLogger("fluxfill")
        core_logger.addHandler(_TritonLogHandler())
        core_logger.setLevel(logging.INFO)
        try:
            from fluxfill.inpaint.config import flatten_triton_parameters
            from fluxfill.inpaint.contract import INPUTS
            from fluxfill.inpaint.errors import InpaintError
            from fluxfill.inpaint.service import FluxFillService
        except ImportError as error:
            raise RuntimeError(
                f"flux_fill cannot import its inpainting core ({error}); install fluxfill[model] "
                "into the Python environment that tritonserver's python backend uses"
            ) from error
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
        report = self._service.report
        pb_utils.Logger.log_info(
            f"flux_fill ready on {report.device} ({report.dtype}, offload={report.offload.mode}: "
            f"{report.offload.reason}, transformer parameters={report.transformer_parameters})"
        )
        if report.is_test_model:
            pb_utils.Logger.log_warn(
                "flux_fill is serving a TINY TEST MODEL with random weights: every output is noise. "
                "Set the weights_dir parameter to real FLUX.1-Fill weights for real edits."
            )

    def execute(self, requests: list[Any]) -> list[Any]:
        """Answer each request on its own, so one bad request never fails the others."""
        return [self._answer(request) for request in requests]

    def _answer(self, request: Any) -> Any:
        inputs = {}
        for name in self._input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            inputs[name] = None if tensor is None else tensor.as_numpy()
        try:
            result = self._service.run(inputs)
        except self._expected_errors as error:
            return _error_response(str(error), error.code)
        except Exception as error:  # one broken request must not take the instance down
            pb_utils.Logger.log_error(f"flux_fill internal error: {traceback.format_exc()}")
            return _error_response(f"internal error: {type(error).__name__}: {error}", "INTERNAL")
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("IMAGE", result.image),
                pb_utils.Tensor("SEED", np.array([result.seed], dtype=np.int64)),
            ]
        )


def _error_response(message: str, code: str) -> Any:
    # The core's error codes are named after TritonError's (INVALID_ARG, CANCELLED, UNAVAILABLE, ...).
    triton_code = getattr(pb_utils.TritonError, code, pb_utils.TritonError.INTERNAL)
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, triton_code))
