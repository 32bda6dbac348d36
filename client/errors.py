"""Errors the client raises, translated from tritonclient and socket errors at one boundary.

FluxFillError
├── InvalidInputError         the input is wrong (bad file, mask size, INVALID_ARG / HTTP 400); exit code 2
├── ServiceUnavailableError   no server, model not ready, queue full (UNAVAILABLE / 503); exit code 3
│   └── ContractMismatchError the server's model declares other tensors than this client's contract
├── CancelledError            the run was cancelled; exit code 4
└── DeadlineExceededError     the run hit its time limit; exit code 4

Only a `ServiceUnavailableError` with `retryable` set is worth retrying: the server may come back or its
queue drain. A model that failed to load, or a contract mismatch, will not fix itself.
"""

import http.client
from collections.abc import Iterator
from contextlib import contextmanager

from tritonclient.utils import InferenceServerException

from fluxfill.inpaint.contract import INPUTS

# The command line's exit codes (documented in the README).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_STOPPED = 0, 1, 2, 3, 4


class FluxFillError(Exception):
    """Base of every client error; `exit_code` is what the CLI exits with."""

    exit_code = EXIT_FAILED


class InvalidInputError(FluxFillError):
    """The input cannot be used; the message says which and why."""

    exit_code = EXIT_USAGE


class ServiceUnavailableError(FluxFillError):
    """The server or the model cannot answer now; `retryable` when trying again may help."""

    exit_code = EXIT_UNAVAILABLE

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class ContractMismatchError(ServiceUnavailableError):
    """The served model's inputs or outputs differ from fluxfill.inpaint.contract."""


class CancelledError(FluxFillError):
    """The run was cancelled, by the caller or on the server."""

    exit_code = EXIT_STOPPED


class DeadlineExceededError(FluxFillError):
    """The run did not finish within its time limit."""

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
_RETRYABLE_STATUSES = {"StatusCode.UNAVAILABLE", "503"}
# Retryable unavailability told by the message alone (a stream's errors carry no status).
_UNREACHABLE_HINTS = (
    "connection refused",
    "failed to connect",
    "connect failed",
    "socket closed",
    "exceeds maximum queue size",
)
# gRPC's words for a connection whose pings went unanswered (fluxfill.client.inference.KEEPALIVE).
_SILENT_HINT = "ping timeout"
# gRPC's words for a server that closed the connection for pings sooner than its policy allows (a Keepalive
# interval shorter than Triton's --grpc-http2-min-recv-ping-interval-without-data while no data flows, as
# while a call waits in the queue): retrying pings as often and ends the same way, each try leaving its run.
_TOO_MANY_PINGS_HINT = "too many pings"
TOO_MANY_PINGS = (
    "the server closed the connection: pinged more often than it allows; give the client a Keepalive whose "
    "interval_s is at least the server's --grpc-http2-min-recv-ping-interval-without-data (300 s by default)"
)
# gRPC's words for a peer that answered in HTTP/1 (the HTTP port): retrying cannot help.
_NOT_GRPC_HINT = "failed parsing http/2"
NOT_GRPC = "answers HTTP/1, not gRPC: is this the HTTP port? (gRPC: 8001 by default; or --protocol http)"
_NOT_HTTP = "it does not answer HTTP/1: is this the gRPC port? (HTTP: 8000 by default; or --protocol grpc)"
# Input validation messages from the model start with the tensor's name ("MASK: must have shape ...").
_INPUT_PREFIXES = tuple(f"{spec.name}: " for spec in INPUTS)


def map_triton_error(error: InferenceServerException) -> FluxFillError:
    """Translate a tritonclient exception into our tree, keeping the server's message."""
    status = str(error.status()) if error.status() is not None else ""
    message = error.message() or str(error)
    return classify(message, status)


def classify(message: str, status: str = "") -> FluxFillError:
    """The error for a server message and status; a stream's errors carry the message only."""
    lowered = message.lower()
    told = _told_by_message(message, lowered)
    if told is not None:
        return told
    kind = _BY_STATUS.get(status)
    if kind is None:
        if any(hint in lowered for hint in _UNREACHABLE_HINTS):
            return ServiceUnavailableError(message, retryable=True)
        if "cancelled" in lowered:
            kind = CancelledError
        elif _strip_request_id(message).startswith(_INPUT_PREFIXES):
            kind = InvalidInputError
    if kind is ServiceUnavailableError:
        unreachable = any(hint in lowered for hint in _UNREACHABLE_HINTS)
        return ServiceUnavailableError(message, retryable=status in _RETRYABLE_STATUSES or unreachable)
    return (kind or FluxFillError)(message)


def _told_by_message(message: str, lowered: str) -> FluxFillError | None:
    """The error a message tells whatever its status; None when the status decides."""
    # The model reports its time limit as UNAVAILABLE with this prefix: it must not look retryable.
    if "deadline exceeded" in lowered:
        return DeadlineExceededError(message)
    # HTTP answers 400 for a model the server does not serve: that is no fault of the input.
    if "unknown model" in lowered or "no available versions" in lowered:
        return ServiceUnavailableError(message)
    if _NOT_GRPC_HINT in lowered:
        return ServiceUnavailableError(f"it {NOT_GRPC} ({message})")
    if _TOO_MANY_PINGS_HINT in lowered:
        return ServiceUnavailableError(f"{TOO_MANY_PINGS} ({message})")
    if _SILENT_HINT in lowered:
        return ServiceUnavailableError(
            f"the server stopped answering mid-call: frozen, or cut off by the network ({message})",
            retryable=True,
        )
    return None


def _strip_request_id(message: str) -> str:
    # Triton may prefix a model's message with "[request id: ...] ".
    if message.startswith("[request id:"):
        return message.partition("] ")[2]
    return message


@contextmanager
def mapped_errors(url: str) -> Iterator[None]:
    """The one boundary: tritonclient and socket errors inside become `FluxFillError`s."""
    try:
        yield
    except InferenceServerException as error:
        mapped = map_triton_error(error)
        if isinstance(mapped, ServiceUnavailableError) and url not in str(mapped):
            # Say which server: gRPC's own text names a resolved address at best.
            mapped = type(mapped)(f"{url}: {mapped}", retryable=mapped.retryable)
        raise mapped from None
    except http.client.HTTPException as error:
        # geventhttpclient's parse errors: an HTTP/2 (gRPC) server answered.
        raise ServiceUnavailableError(f"{url}: {_NOT_HTTP} ({error!r})") from None
    except TimeoutError as error:
        # The HTTP client's network timeout surfaces as a bare socket timeout.
        raise DeadlineExceededError(f"deadline exceeded: no answer from {url} in time ({error})") from None
    except OSError as error:
        # The HTTP client raises plain socket errors (refused, reset, unresolvable) for a missing server.
        raise ServiceUnavailableError(f"cannot reach {url}: {error}", retryable=True) from None
