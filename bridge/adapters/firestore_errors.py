"""The boundary of every Firestore call: its time bounded, its failures become the bridge's session errors."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from google.api_core import exceptions as api
from google.api_core.retry import Retry, if_exception_type

from fluxfill.bridge.errors import SessionRefusedError, SessionTransientError

# Google's client gives a Firestore call that gets no answer (a half-open connection, a network that drops
# packets) up to 300 s with its retries (a read; 60 s a write): a claim, a final write or `fluxfill watch`
# hung that long. Firestore answers in well under a second when it answers at all.
CALL_TIMEOUT_S = 30.0
# What Google's client retries of a commit by default. A write retried may have landed the first time: every
# write here is conditional (an update time, `create`) or writes the same again.
_RETRIED = if_exception_type(api.ServiceUnavailable, api.ResourceExhausted)


def bounded(seconds: float | None = None) -> dict[str, Any]:
    """Keyword arguments that bound one Firestore call, its retries included, to about `seconds` (default
    CALL_TIMEOUT_S): an attempt that gets no answer ends with DeadlineExceeded and is not tried again."""
    limit = CALL_TIMEOUT_S if seconds is None else seconds
    return {"timeout": limit, "retry": Retry(predicate=_RETRIED, initial=0.25, maximum=4.0, timeout=limit)}


@contextmanager
def firestore_errors(action: str) -> Iterator[None]:
    """The boundary: Firestore's failures become SessionTransientError (contention is the caller's:
    fluxfill.bridge.adapters.compare_and_set).

    InvalidArgument is the exception: Firestore refuses the request itself (a reserved or malformed path),
    and will refuse it however often it is retried.
    """
    try:
        yield
    except api.InvalidArgument as error:
        raise SessionRefusedError(f"firestore refused to {action}: {error.message}") from None
    except (api.GoogleAPICallError, api.RetryError) as error:
        raise SessionTransientError(f"firestore failed to {action}: {error}") from None
