"""flux_fill (unary, HTTP and gRPC): forwards to flux_fill_stream through BLS and returns its final image.

It holds no weights, so the 12B model is loaded once per GPU however it is called.
"""

from typing import Any

import triton_python_backend_utils as pb_utils

from fluxfill.inpaint import forwarding
from fluxfill.inpaint.contract import INPUTS, OUTPUTS, STREAM_MODEL_NAME
from fluxfill.inpaint.errors import code_for_message

_INPUT_NAMES = tuple(spec.name for spec in INPUTS)
_OUTPUT_NAMES = [spec.name for spec in OUTPUTS]


class TritonPythonModel:
    """A thin forwarder; cancellation of the caller's request is passed on within one step."""

    def execute(self, requests: list[Any]) -> list[Any]:
        """Forward each request and wait for its final response."""
        return [self._forward(request) for request in requests]

    def _forward(self, request: Any) -> Any:
        inputs = [
            t for t in (pb_utils.get_input_tensor_by_name(request, n) for n in _INPUT_NAMES) if t is not None
        ]
        request_id = forwarding.new_forwarded_id()
        forwarding.open_run(request_id)
        inner = pb_utils.InferenceRequest(
            model_name=STREAM_MODEL_NAME,
            inputs=inputs,
            requested_output_names=[*_OUTPUT_NAMES, "STEP", "TOTAL_STEPS"],
            request_id=request_id,
        )
        final = None
        try:
            # One response per step arrives, so a cancelled caller is noticed within a step.
            for response in inner.exec(decoupled=True):
                if request.is_cancelled():
                    forwarding.request_cancel(request_id)
                if response.has_error():
                    return _error(request_id, response.error().message())
                if pb_utils.get_output_tensor_by_name(response, "IMAGE") is not None:
                    final = response
            if final is None:
                return _error(request_id, f"{STREAM_MODEL_NAME} ended without a final image")
        finally:
            forwarding.clear(request_id)
        outputs = [pb_utils.get_output_tensor_by_name(final, name) for name in _OUTPUT_NAMES]
        return pb_utils.InferenceResponse(output_tensors=outputs)


def _error(request_id: str, fallback_message: str) -> Any:
    # BLS hands inner errors over as INTERNAL (or drops them) in this server build: prefer the error the
    # streaming model recorded; Triton's own refusals (queue full, not loaded) are known by their message.
    recorded = forwarding.take_error(request_id)
    code, message = recorded or (code_for_message(fallback_message, _INPUT_NAMES), fallback_message)
    return pb_utils.InferenceResponse(
        error=pb_utils.TritonError(message, getattr(pb_utils.TritonError, code))
    )
