"""The boundary where tritonclient's and the socket's errors become the bridge's (mirrors client/errors.py).

Only invalid input is permanent: a server that is down, a model that is loading or failed, a full queue or an
internal error may all pass, so they are retried (and, after the last attempt, dead-lettered). A full queue is
told apart (TritonBusyError): it says the server is up and busy, not that it is gone.
"""

from tritonclient.utils import InferenceServerException

from fluxfill.bridge.errors import (
    BridgeError,
    JobCancelledError,
    JobDeadlineExceededError,
    ModelRefusedInputError,
    TritonBusyError,
    TritonUnavailableError,
)
from fluxfill.inpaint.contract import INPUTS

_INVALID_STATUSES = frozenset({"StatusCode.INVALID_ARGUMENT", "400"})
_DEADLINE_STATUSES = frozenset({"StatusCode.DEADLINE_EXCEEDED"})
# Triton's refusal by a bounded queue (HTTP 503 / gRPC UNAVAILABLE, and as text through BLS and streams).
_QUEUE_FULL = "exceeds maximum queue size"
# The model's input errors start with the tensor's name ("MASK: must have shape ..."); a stream's errors
# carry no status, so this prefix is what marks them.
_INPUT_PREFIXES = {f"{spec.name}: ": spec.name for spec in INPUTS}


def _strip_request_id(message: str) -> str:
    if message.startswith("[request id:"):
        return message.partition("] ")[2]
    return message


def _refused_tensor(message: str) -> str | None:
    """The input a model's error names first, if any."""
    return next((name for prefix, name in _INPUT_PREFIXES.items() if message.startswith(prefix)), None)


def map_triton_exception(error: BaseException) -> BridgeError:
    """Our error for anything a Triton call raised or reported."""
    if isinstance(error, BridgeError):
        return error
    if isinstance(error, InferenceServerException):
        return _from_server(error)
    if isinstance(error, TimeoutError):
        return JobDeadlineExceededError(f"deadline exceeded: no answer from Triton in time ({error})")
    # Refused or reset connections from the HTTP client, and anything else a call can throw.
    return TritonUnavailableError(f"cannot use triton: {type(error).__name__}: {error}")


def _from_server(error: InferenceServerException) -> BridgeError:
    status = str(error.status()) if error.status() is not None else ""
    message = error.message() or str(error)
    lowered = message.lower()
    # The model reports its time limit with this prefix, whatever the status.
    if "deadline exceeded" in lowered or status in _DEADLINE_STATUSES:
        return JobDeadlineExceededError(message)
    if status == "StatusCode.CANCELLED" or "cancelled" in lowered:
        return JobCancelledError(message)
    tensor = _refused_tensor(_strip_request_id(message))
    if status in _INVALID_STATUSES or tensor is not None:
        return ModelRefusedInputError(f"the model refused the input: {message}", tensor)
    if _QUEUE_FULL in lowered:
        return TritonBusyError(f"triton: {message}")
    return TritonUnavailableError(f"triton: {message}")
