"""Retry a call with exponential backoff, on retryable unavailability only."""

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from fluxfill.client.errors import ServiceUnavailableError

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """`retries` more attempts after the first, waiting `first_delay_s`, then doubling up to `max_delay_s`."""

    retries: int = 3
    first_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def delays(self) -> Iterator[float]:
        """The waits before each retry, one at a time: `--retries 2000` built a list and overflowed a float
        (2**1024), an unexpected error; a million retries are a million waits, not a list of them."""
        for attempt in range(self.retries):
            # Past 2**63 times the first delay, any cap has long been reached.
            yield min(self.first_delay_s * 2 ** min(attempt, 63), self.max_delay_s)


NO_RETRY = RetryPolicy(retries=0)


def call_with_retries(
    call: Callable[[], T], policy: RetryPolicy, sleep: Callable[[float], None] = time.sleep
) -> T:
    """Run `call`; on a retryable ServiceUnavailableError wait and try again, then re-raise the last one."""
    for delay in policy.delays():
        try:
            return call()
        except ServiceUnavailableError as error:
            if not error.retryable:
                raise
            logger.warning("service unavailable (%s); retrying in %.1f s", error, delay)
        sleep(delay)
    return call()
