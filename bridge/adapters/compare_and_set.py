"""One Firestore document changed by compare-and-set: read it, decide, write only if nobody wrote in between.

Why not a transaction: in this client a transaction is three calls (begin, read, commit) and locks what it
reads, so two that read the same document and then both write wait on each other until Firestore's lock
timeout. Compare-and-set is a plain read and one write with the read's update time as its precondition (or
`create` when there was no document): two calls, one when nothing is written. A lost race reads again; nobody
waits on a lock, and exactly one of racing writers wins each round.

The write is an `update`: each top-level field named replaces the stored one as a whole (a map included),
every other field is left as it was.
"""

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from google.api_core import exceptions as api
from google.cloud import firestore

from fluxfill.bridge.adapters.firestore_errors import firestore_errors
from fluxfill.bridge.errors import SessionTransientError

T = TypeVar("T")
# What to answer and what to write (None: nothing), given the document (None: there is none) and the time.
Decide = Callable[[Mapping[str, Any] | None, datetime], tuple[T, Mapping[str, Any] | None]]
# Rounds of read-then-conditional-write before a change counts as lost to contention (the job comes back).
ROUNDS = 10
# A write that finds the document changed (FailedPrecondition), created (Conflict) or deleted (NotFound)
# since the read lost the round.
_LOST_RACE = (api.FailedPrecondition, api.Conflict, api.NotFound)


def compare_and_set(
    client: firestore.Client, path: str, action: str, decide: Decide[T], now: Callable[[], datetime]
) -> T:
    """`decide`'s answer once its write (if any) landed on the document it read; SessionTransientError when
    other writers won `ROUNDS` rounds in a row, and firestore_errors' errors for Firestore's own failures."""
    reference = client.document(path)
    for _ in range(ROUNDS):
        with firestore_errors(action):
            snapshot = reference.get()
            answer, fields = decide(snapshot.to_dict() if snapshot.exists else None, now())
            if fields is None:
                return answer
            written = {str(name): value for name, value in fields.items()}
            try:
                if snapshot.exists:
                    option = client.write_option(last_update_time=snapshot.update_time)
                    reference.update(written, option=option)
                else:
                    reference.create(written)
            except _LOST_RACE:
                continue  # another writer came first: read again
            return answer
    raise SessionTransientError(f"{action}: the document kept changing ({ROUNDS} rounds)")
