"""Retries with exponential backoff, on retryable unavailability only."""

from dataclasses import dataclass, field

import pytest

from fluxfill.client.errors import FluxFillError, InvalidInputError, ServiceUnavailableError
from fluxfill.client.retry import NO_RETRY, RetryPolicy, call_with_retries


@dataclass
class FlakyCall:
    """Fails with the given errors in turn, then returns "ok"."""

    errors: list[FluxFillError]
    calls: int = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


@dataclass
class Sleeps:
    waited: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.waited.append(seconds)


def unavailable(retryable: bool = True) -> ServiceUnavailableError:
    return ServiceUnavailableError("down", retryable=retryable)


def test_retryable_unavailability_is_retried_with_doubling_waits() -> None:
    call, sleeps = FlakyCall([unavailable(), unavailable()]), Sleeps()
    assert call_with_retries(call, RetryPolicy(retries=3, first_delay_s=0.5), sleeps) == "ok"
    assert call.calls == 3
    assert sleeps.waited == [0.5, 1.0]


def test_the_last_error_is_raised_when_retries_run_out() -> None:
    call, sleeps = FlakyCall([unavailable() for _ in range(4)]), Sleeps()
    with pytest.raises(ServiceUnavailableError):
        call_with_retries(call, RetryPolicy(retries=3, first_delay_s=1.0, max_delay_s=3.0), sleeps)
    assert call.calls == 4
    assert sleeps.waited == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("error", [InvalidInputError("bad"), unavailable(retryable=False)])
def test_other_errors_are_not_retried(error: FluxFillError) -> None:
    call, sleeps = FlakyCall([error]), Sleeps()
    with pytest.raises(type(error)):
        call_with_retries(call, RetryPolicy(retries=3), sleeps)
    assert call.calls == 1
    assert sleeps.waited == []


def test_no_retry_calls_once() -> None:
    call, sleeps = FlakyCall([unavailable()]), Sleeps()
    with pytest.raises(ServiceUnavailableError):
        call_with_retries(call, NO_RETRY, sleeps)
    assert call.calls == 1


def test_any_number_of_retries_waits_doubling_up_to_the_cap() -> None:
    """2,000 retries overflowed a float computing the last waits (an unexpected error from `fluxfill infer
    --retries 2000`); the waits come one at a time, so a million are no list in memory either."""
    call, sleeps = FlakyCall([unavailable()] * 1999), Sleeps()
    patient = RetryPolicy(retries=2000, first_delay_s=0.5, max_delay_s=8.0)
    assert call_with_retries(call, patient, sleeps) == "ok"
    assert sleeps.waited[:6] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert set(sleeps.waited[4:]) == {8.0}
    waits = RetryPolicy(retries=10**12).delays()
    assert [next(waits) for _ in range(3)] == [0.5, 1.0, 2.0]
