"""One Firestore document changed by compare-and-set: read it, decide, write only if nobody wrote in between.

Why not a transaction: in this client a transaction is three calls (begin, read, commit) and locks what it
reads, so two that read the same document and then both write wait on each other until Firestore's lock
timeout. Compare-and-set is a plain read and one write with the read's update time as its precondition (or
`create` when there was no document): two calls, one when nothing is written. A lost race reads again; nobody
waits on a lock, and exactly one of racing writers wins each round.

A change may start from the document as the caller last saw it (`Known`: what its own last read or write
left) instead of reading: one call. The precondition makes that as safe as a read: if anyone wrote since, the
write is refused and the change reads and decides again. An answer that writes nothing is only ever given
from a document read in the same change.

The write is an `update`: each top-level field named replaces the stored one as a whole (a map included),
every other field is left as it was.
"""

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from google.api_core import exceptions as api
from google.cloud import firestore

from fluxfill.bridge.adapters.firestore_errors import bounded, firestore_errors
from fluxfill.bridge.errors import SessionTransientError

T = TypeVar("T")
# What to answer and what to write (None: nothing), given the document (None: there is none) and the time.
Decide = Callable[[Mapping[str, Any] | None, datetime], tuple[T, Mapping[str, Any] | None]]
# Rounds of read-then-conditional-write before a change counts as lost to contention (the job comes back).
ROUNDS = 10
# A write that finds the document changed (FailedPrecondition), created (Conflict) or deleted (NotFound)
# since the read lost the round.
_LOST_RACE = (api.FailedPrecondition, api.Conflict, api.NotFound)


@dataclass(frozen=True)
class Known:
    """A document as read or written at `update_time`, made at `create_time`; `fields` None: it did not
    exist."""

    fields: Mapping[str, Any] | None
    update_time: Any = None  # Firestore's timestamp, to nanoseconds
    create_time: datetime | None = None


def compare_and_set(
    client: firestore.Client,
    path: str,
    action: str,
    decide: Decide[T],
    now: Callable[[], datetime],
    *,
    known: Known | None = None,
    call_timeout_s: float | None = None,
    refuse: Callable[[datetime | None], T | None] | None = None,
) -> tuple[T, Known]:
    """`decide`'s answer once its write (if any) landed on the document it decided on, and the document as
    that left it; SessionTransientError when other writers won `ROUNDS` rounds in a row, and
    firestore_errors' errors for Firestore's own failures. `known`: start from it instead of reading;
    `call_timeout_s`: each call's bound (firestore_errors.bounded); `refuse`: an answer from the document's
    create time alone (None when it exists, or to go on to `decide`), given before `decide` with nothing
    written."""
    reference = client.document(path)
    for _ in range(ROUNDS):
        with firestore_errors(action):
            read = known is None
            if known is None:
                snapshot = reference.get(**bounded(call_timeout_s))
                known = (
                    Known(snapshot.to_dict(), snapshot.update_time, snapshot.create_time)
                    if snapshot.exists
                    else Known(None)
                )
            refused = refuse(known.create_time) if refuse is not None and known.fields is not None else None
            if refused is not None:
                if not read:  # the document may have been made again since it was known: read it
                    known = None
                    continue
                return refused, known
            answer, fields = decide(known.fields, now())
            if fields is None:
                if not read:  # nothing written to prove the document was still as known: read it
                    known = None
                    continue
                return answer, known
            written = {str(name): value for name, value in fields.items()}
            try:
                if known.fields is not None:
                    option = client.write_option(last_update_time=known.update_time)
                    result = reference.update(written, option=option, **bounded(call_timeout_s))
                else:
                    result = reference.create(written, **bounded(call_timeout_s))
            except _LOST_RACE:
                known = None  # another writer came first: read again
                continue
            # An update keeps the document's create time; a create makes it.
            made = known.create_time if known.fields is not None else result.update_time
            return answer, Known({**(known.fields or {}), **written}, result.update_time, made)
    raise SessionTransientError(f"{action}: the document kept changing ({ROUNDS} rounds)")


class KnownDocuments:
    """Documents as this process's own last read or write left them, so that a change of one starts from there
    (one call; a document changed since is read again, see compare_and_set); at most `limit`, the oldest
    forgotten first."""

    def __init__(self, client: firestore.Client, now: Callable[[], datetime], limit: int) -> None:
        self._client = client
        self._now = now
        self._limit = limit
        self._documents: dict[str, Known] = {}
        self._lock = threading.Lock()

    def change(self, path: str, action: str, decide: Decide[T]) -> T:
        """compare_and_set from the document as last known, which is then what it left."""
        with self._lock:
            known = self._documents.pop(path, None)
        answer, after = compare_and_set(self._client, path, action, decide, self._now, known=known)
        self.remember(path, after)
        return answer

    def remember(self, path: str, document: Known | None) -> None:
        """Start the next change of `path` from `document` (None: read it first)."""
        with self._lock:
            self._documents.pop(path, None)
            if document is None:
                return
            self._documents[path] = document
            while len(self._documents) > self._limit:
                del self._documents[next(iter(self._documents))]
