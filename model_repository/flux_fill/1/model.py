"""flux_fill (unary, HTTP and gRPC): forwards to flux_fill_stream through BLS and returns its final image.

It holds no weights, so the 12B model is loaded once per GPU however it is called.
"""

from typing import Any

import triton_python_backend_utils as pb_utils

from fluxfill.inpaint import cancel_flags
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
        request_id = cancel_flags.new_forwarded_id()
        inner = pb_utils.InferenceRequest(
            model_name=STREAM_MODEL_NAME,
            inputs=inputs,
            requested_output_names=_OUTPUT_NAMES,
            request_id=request_id,
        )
        final = None
        try:
            # One response per step arrives, so a cancelled caller is noticed within a step.
            for response in inner.exec(decoupled=True):
                if request.is_cancelled():
                    cancel_flags.request_cancel(request_id)
                if response.has_error():
                    return _error(response.error().message())
                if pb_utils.get_output_tensor_by_name(response, "IMAGE") is not None:
                    final = response
        finally:
            cancel_flags.clear(request_id)
        if final is None:
            return _error(f"{STREAM_MODEL_NAME} ended without a final image")
        outputs = [pb_utils.get_output_tensor_by_name(final, name) for name in _OUTPUT_NAMES]
        return pb_utils.InferenceResponse(output_tensors=outputs)


def _error(message: str) -> Any:
    # BLS hands every inner error over as INTERNAL in this server build: recover the code from the message.
    code = getattr(pb_utils.TritonError, code_for_message(message, _INPUT_NAMES))
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
