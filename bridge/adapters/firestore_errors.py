"""The boundary of every Firestore call: its failures become the bridge's session errors."""

from collections.abc import Iterator
from contextlib import contextmanager

from google.api_core import exceptions as api

from fluxfill.bridge.errors import SessionRefusedError, SessionTransientError


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
