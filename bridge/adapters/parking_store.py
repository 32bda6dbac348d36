"""Parked jobs in Firestore: `{collection}/{userId}/jobs/{sessionId}` (see fluxfill.bridge.parking).

A parked document holds the message as it will be published again (data, attributes as JSON: attribute
names are the publisher's and need not be valid Firestore field names), its lane and when the job was first
published, which orders a user's parked jobs. A release marks the document (compare-and-set on its update
time, so one bridge wins it), publishes, then deletes it only if nothing wrote in between: a job parked
again by the bridge that took its release (its user still at the limit) is not deleted with the old one.
A mark older than RELEASE_RETRY_S is taken as a release that died half-way, and the job is released again.
"""

import contextlib
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from google.api_core import exceptions as api
from google.cloud import firestore

from fluxfill.bridge.adapters.compare_and_set import compare_and_set
from fluxfill.bridge.adapters.firestore_errors import bounded, firestore_errors
from fluxfill.bridge.errors import RetryableError
from fluxfill.bridge.parking import supersedes
from fluxfill.bridge.ports import ParkedJob, Requeue

logger = structlog.get_logger(__name__)
JOBS = "jobs"
RELEASE_RETRY_S = 60.0
# Documents read beyond those asked for, so that a few marked by other bridges' releases do not hide the next.
SCAN_EXTRA = 8
_RELEASING = "releasing"


class FirestoreParkingLot:
    """Parked jobs under `collection`, published on release through `requeue`."""

    def __init__(
        self,
        client: firestore.Client,
        collection: str,
        requeue: Requeue,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client = client
        self._collection = collection
        self._requeue = requeue
        self._now = now

    def _jobs(self, user: str) -> Any:
        return self._client.collection(self._collection, user, JOBS)

    def park(self, job: ParkedJob) -> bool:
        """See ParkingLot.park: by compare-and-set, replacing a parked message of the same session the job
        supersedes, and a release's mark.

        Replacing, not keeping the first: a job parked again while its release is under way must not be lost
        with the document its release then deletes (the release's delete is refused once anything wrote). A
        released job carries its first publish time, and keeps it.
        """
        now = self._now()
        first = job.first_published or now
        document = {
            "data": job.data,
            "attributes": json.dumps(dict(job.attributes)),
            "lane": job.lane,
            "firstPublished": first,
            "parkedAt": now,
            _RELEASING: None,
        }

        def decide(fields: Mapping[str, Any] | None, _: datetime) -> tuple[bool, dict[str, Any] | None]:
            parked_first = (fields or {}).get("firstPublished")
            if isinstance(parked_first, datetime) and not supersedes(first, parked_first):
                return False, None
            return True, document

        path = f"{self._collection}/{job.user}/{JOBS}/{job.session}"
        kept, _ = compare_and_set(self._client, path, "park the job", decide, self._now)
        return kept

    def oldest(self, user: str, count: int) -> list[ParkedJob]:
        """See ParkingLot.oldest."""
        stale = self._now() - timedelta(seconds=RELEASE_RETRY_S)
        query = self._jobs(user).order_by("firstPublished").limit(count + SCAN_EXTRA)
        with firestore_errors("read the parked jobs"):
            snapshots = list(query.stream(**bounded()))
        found = []
        for snapshot in snapshots:
            fields = snapshot.to_dict() or {}
            marked = fields.get(_RELEASING)
            if isinstance(marked, datetime) and marked > stale:
                continue  # another bridge is publishing it now
            parked = _parked(user, snapshot.id, fields, snapshot.update_time)
            if parked is not None:
                found.append(parked)
            if len(found) == count:
                break
        return found

    def release(self, job: ParkedJob) -> bool:
        """See ParkingLot.release."""
        reference = self._jobs(job.user).document(job.session)
        with firestore_errors("mark the parked job released"):
            try:
                marked = reference.update(
                    {_RELEASING: self._now()},
                    option=self._client.write_option(last_update_time=job.version),
                    **bounded(),
                )
            except (api.FailedPrecondition, api.NotFound):
                return False  # released by another bridge, or parked anew: not this version's to publish
        try:
            self._requeue.publish(job.data, job.attributes, job.lane)
        except RetryableError:
            self._unmark(reference, marked.update_time)
            raise
        try:
            with firestore_errors("delete the released job"), contextlib.suppress(api.FailedPrecondition):
                # Refused when parked again meanwhile (its user still at the limit): that parking stands.
                reference.delete(
                    option=self._client.write_option(last_update_time=marked.update_time), **bounded()
                )
        except RetryableError as error:
            # Published already: the mark lapses and it is published once more, which runs once.
            logger.warning("a released job's parking could not be deleted", error=str(error))
        return True

    def _unmark(self, reference: Any, version: Any) -> None:
        """After a failed publish: parked as before, for the next release (not only once its mark lapses)."""
        try:
            with firestore_errors("unmark the parked job"):
                reference.update(
                    {_RELEASING: firestore.DELETE_FIELD},
                    option=self._client.write_option(last_update_time=version),
                    **bounded(),
                )
        except RetryableError as error:
            logger.warning("a parked job stays marked until its mark lapses", error=str(error))

    def users(self) -> list[str]:
        """See ParkingLot.users: the user documents are never written, only listed (as missing parents)."""
        with firestore_errors("list the parked jobs' users"):
            return [
                reference.id
                for reference in self._client.collection(self._collection).list_documents(**bounded())
            ]


def _parked(user: str, session: str, fields: dict[str, Any], version: Any) -> ParkedJob | None:
    """The parked job a document holds; None (logged) for one this code did not write."""
    try:
        attributes = json.loads(fields["attributes"])
        data, lane, first = fields["data"], fields["lane"], fields["firstPublished"]
        if not (isinstance(attributes, dict) and isinstance(data, bytes) and isinstance(first, datetime)):
            raise TypeError("unexpected field types")
    except (KeyError, TypeError, ValueError) as error:
        logger.error("skipping a parked document that is not a parked job", session=session, error=str(error))
        return None
    return ParkedJob(
        user, session, data, {str(k): str(v) for k, v in attributes.items()}, str(lane), first, version
    )
