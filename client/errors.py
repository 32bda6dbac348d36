"""Errors the client raises, translated from tritonclient at one boundary.

FluxFillError
├── InvalidInputError         the server refused the input (INVALID_ARG / HTTP 400); exit code 2
├── ServiceUnavailableError   no server, model not ready, queue full (UNAVAILABLE / 503); exit code 3
├── CancelledError            the run was cancelled; exit code 4
└── DeadlineExceededError     the run hit its time limit; exit code 4
"""

from tritonclient.utils import InferenceServerException

# The command line's exit codes (documented in the README).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_STOPPED = 0, 1, 2, 3, 4


class FluxFillError(Exception):
    """Base of every client error; `exit_code` is what the CLI exits with."""

    exit_code = EXIT_FAILED


class InvalidInputError(FluxFillError):
    exit_code = EXIT_USAGE


class ServiceUnavailableError(FluxFillError):
    exit_code = EXIT_UNAVAILABLE


class CancelledError(FluxFillError):
    exit_code = EXIT_STOPPED


class DeadlineExceededError(FluxFillError):
    exit_code = EXIT_STOPPED


# gRPC status names and HTTP status codes as tritonclient reports them.
_BY_STATUS: dict[str, type[FluxFillError]] = {
    "StatusCode.INVALID_ARGUMENT": InvalidInputError,
    "400": InvalidInputError,
    "StatusCode.UNAVAILABLE": ServiceUnavailableError,
    "503": ServiceUnavailableError,
    # A model that failed to load (or is not loaded yet) has "no available versions".
    "StatusCode.NOT_FOUND": ServiceUnavailableError,
    "404": ServiceUnavailableError,
    "StatusCode.CANCELLED": CancelledError,
    "StatusCode.DEADLINE_EXCEEDED": DeadlineExceededError,
    "504": DeadlineExceededError,
}


def map_triton_error(error: InferenceServerException) -> FluxFillError:
    """Translate a tritonclient exception into our tree, keeping the server's message."""
    status = str(error.status()) if error.status() is not None else ""
    message = error.message() or str(error)
    kind = _BY_STATUS.get(status)
    if kind is None and _looks_unreachable(message):
        kind = ServiceUnavailableError
    return (kind or FluxFillError)(message)


def _looks_unreachable(message: str) -> bool:
    lowered = message.lower()
    return any(
        hint in lowered
        for hint in ("connection refused", "failed to connect", "connect failed", "unavailable")
    )
