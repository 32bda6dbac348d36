"""The QueuedCancels port over Firestore: a collection-group query, and each cancel ended by compare-and-set.

The query filters two fields across every collection of the session template's collection id, which
Firestore serves only from a composite index of collection-group scope (`deploy/pubsub-iam.sh` creates it;
without it every query fails FAILED_PRECONDITION and the sweep logs so). The emulator needs none.
"""

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from fluxfill.bridge import sessions
from fluxfill.bridge.adapters.compare_and_set import compare_and_set
from fluxfill.bridge.adapters.firestore_errors import bounded, firestore_errors
from fluxfill.bridge.contract import ErrorCode, JobStatus, SessionField

# The fields the query filters on, in the composite index's order (a deploy test keeps them equal).
INDEXED_FIELDS = (SessionField.CANCEL_REQUESTED, SessionField.STATUS)
CANCELLED_QUEUED = "cancelled by the app while queued, before it started"


class FirestoreQueuedCancels:
    """Session documents of one `google.cloud.firestore.Client` in collections named `collection`."""

    def __init__(
        self,
        client: firestore.Client,
        collection: str,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client = client
        self._collection = collection
        self._now = now

    def cancelled_queued(self, limit: int) -> list[str]:
        """See QueuedCancels.cancelled_queued."""
        query = (
            self._client.collection_group(self._collection)
            .where(filter=FieldFilter(SessionField.CANCEL_REQUESTED, "==", True))
            .where(filter=FieldFilter(SessionField.STATUS, "==", JobStatus.QUEUED.value))
            .limit(limit)
        )
        with firestore_errors("look for queued jobs their app cancelled"):
            return [snapshot.reference.path for snapshot in query.stream(**bounded())]

    def end_cancelled(self, path: str) -> bool:
        """See QueuedCancels.end_cancelled."""
        error: dict[str, Any] = {
            SessionField.ERROR: {"code": ErrorCode.CANCELLED.value, "message": CANCELLED_QUEUED}
        }

        def decide(
            document: Mapping[str, Any] | None, now: datetime
        ) -> tuple[bool, Mapping[str, Any] | None]:
            update = sessions.cancel_unclaimed(document, now, error, path=path)
            return update is not None, update

        ended, _ = compare_and_set(
            self._client, path, "end a queued job its app cancelled", decide, self._now
        )
        return ended
