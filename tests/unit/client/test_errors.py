"""Every tritonclient and socket error the client meets is mapped once, to the right class and exit code."""

import threading
import time

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from fluxfill.client.errors import (
    CancelledError,
    DeadlineExceededError,
    FluxFillError,
    InvalidInputError,
    ServiceUnavailableError,
    classify,
    mapped_errors,
)
from fluxfill.client.inference import CancelHandle, FluxFillClient, Protocol
from fluxfill.client.retry import RetryPolicy


@pytest.mark.parametrize(
    ("status", "message", "kind", "retryable"),
    [
        ("StatusCode.INVALID_ARGUMENT", "STEPS: must be between 1 and 100, got 0", InvalidInputError, None),
        ("400", "MASK: must have shape", InvalidInputError, None),
        ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", ServiceUnavailableError, True),
        ("503", "Exceeds maximum queue size", ServiceUnavailableError, True),
        ("StatusCode.NOT_FOUND", "Request for unknown model", ServiceUnavailableError, False),
        ("400", "Request for unknown model: 'x' is not found", ServiceUnavailableError, False),
        (
            "StatusCode.UNAVAILABLE",
            "Request for unknown model: 'x' has no available versions",
            ServiceUnavailableError,
            False,
        ),
        ("StatusCode.CANCELLED", "Locally cancelled by application!", CancelledError, None),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", DeadlineExceededError, None),
        # The model reports its time limit as UNAVAILABLE: it must not be retried.
        (
            "StatusCode.UNAVAILABLE",
            "deadline exceeded: stopped after step 3 of 9",
            DeadlineExceededError,
            None,
        ),
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", ServiceUnavailableError, True),
        # A stream's errors carry no status: the message decides.
        ("", "STEPS: must be between 1 and 100, got 0", InvalidInputError, None),
        ("", "[request id: 7] MASK: must have shape", InvalidInputError, None),
        ("", "cancelled by the caller after step 3 of 9", CancelledError, None),
        ("", "deadline exceeded: stopped after step 3", DeadlineExceededError, None),
        ("", "Connection refused", ServiceUnavailableError, True),
        ("", "Exceeds maximum queue size", ServiceUnavailableError, True),
        ("StatusCode.INTERNAL", "internal error: ValueError: boom", FluxFillError, None),
    ],
)
def test_status_and_message_choose_the_class(
    status: str, message: str, kind: type[FluxFillError], retryable: bool | None
) -> None:
    error = classify(message, status)
    assert type(error) is kind
    assert str(error) == message
    if retryable is not None:
        assert isinstance(error, ServiceUnavailableError)
        assert error.retryable is retryable


@pytest.mark.parametrize("status", ["StatusCode.UNAVAILABLE", ""])
def test_unanswered_keepalive_pings_say_the_server_stopped_answering_and_are_retried(status: str) -> None:
    error = classify("Stream removed (ping timeout)", status)
    assert isinstance(error, ServiceUnavailableError)
    assert error.retryable
    assert str(error) == (
        "the server stopped answering mid-call: frozen, or cut off by the network "
        "(Stream removed (ping timeout))"
    )


@pytest.mark.parametrize("status", ["StatusCode.UNAVAILABLE", ""])
def test_pings_the_server_refused_as_too_frequent_say_so_and_are_not_retried(status: str) -> None:
    """Triton closes a connection pinged more often than its policy allows while no data flows ("Too many
    pings"): it read as a bare, retryable UNAVAILABLE, and each retry ran the job again to end alike."""
    error = classify("Too many pings", status)
    assert isinstance(error, ServiceUnavailableError)
    assert not error.retryable
    assert "pinged more often than it allows" in str(error)
    assert "Keepalive whose interval_s is at least" in str(error)
    assert str(error).endswith("(Too many pings)")


@pytest.mark.parametrize(
    ("raised", "kind", "exit_code"),
    [
        (InferenceServerException("bad", status="StatusCode.INVALID_ARGUMENT"), InvalidInputError, 2),
        (InferenceServerException("down", status="StatusCode.UNAVAILABLE"), ServiceUnavailableError, 3),
        (ConnectionRefusedError(111, "Connection refused"), ServiceUnavailableError, 3),
        (OSError("Name or service not known"), ServiceUnavailableError, 3),
        (TimeoutError("timed out"), DeadlineExceededError, 4),
        (InferenceServerException("x", status="StatusCode.CANCELLED"), CancelledError, 4),
    ],
)
def test_the_boundary_maps_upstream_errors_and_sets_the_exit_code(
    raised: Exception, kind: type[FluxFillError], exit_code: int
) -> None:
    with pytest.raises(kind) as caught, mapped_errors("host:1"):
        raise raised
    assert caught.value.exit_code == exit_code
    assert caught.value.__cause__ is None


def test_unavailable_names_the_address() -> None:
    with pytest.raises(ServiceUnavailableError, match=r"^host:1: down$"), mapped_errors("host:1"):
        raise InferenceServerException("down", status="StatusCode.UNAVAILABLE")


def test_other_exceptions_pass_through() -> None:
    with pytest.raises(KeyError), mapped_errors("host:1"):
        raise KeyError("not ours")


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), 0.0, -1.0])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_timeout_that_is_no_positive_number_is_refused_before_any_call(
    timeout: float, protocol: Protocol
) -> None:
    """nan never ran out; 0 or less ran out before the call (DeadlineExceededError, a limit never given);
    infinity was sent for the server to refuse. Nothing listens on port 9: the refusal comes first."""
    image = np.zeros((8, 8, 3), np.uint8)
    refused = pytest.raises(InvalidInputError, match=r"^timeout must be a positive number of seconds, got ")
    with FluxFillClient("127.0.0.1:9", protocol) as client, refused:
        client.inpaint(image, (0, 0, 4, 4), timeout=timeout)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_wait_between_tries_ends_at_the_deadline(protocol: Protocol) -> None:
    """Nothing listens on port 9 (refused: retried). The backoff's 5 s wait was slept whole before the next
    try saw its deadline had passed."""
    patient = RetryPolicy(retries=3, first_delay_s=5.0)
    started = time.monotonic()
    late = pytest.raises(DeadlineExceededError, match="deadline exceeded")
    with FluxFillClient("127.0.0.1:9", protocol, retry=patient) as client, late:
        client.inpaint(np.zeros((8, 8, 3), np.uint8), (0, 0, 4, 4), timeout=0.5)
    assert time.monotonic() - started < 4


def test_a_wait_between_tries_ends_at_a_cancel() -> None:
    patient = RetryPolicy(retries=3, first_delay_s=5.0)
    handle = CancelHandle()
    threading.Timer(0.3, handle.cancel).start()
    started = time.monotonic()
    with FluxFillClient("127.0.0.1:9", retry=patient) as client, pytest.raises(CancelledError):
        client.inpaint(np.zeros((8, 8, 3), np.uint8), (0, 0, 4, 4), cancel=handle)
    assert time.monotonic() - started < 4
