"""The SessionStore port over Firestore: every change applies fluxfill.bridge.sessions by compare-and-set
(fluxfill.bridge.adapters.compare_and_set)."""

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.cloud import firestore

from fluxfill.bridge import sessions
from fluxfill.bridge.adapters.compare_and_set import Decide, Known, KnownDocuments, compare_and_set
from fluxfill.bridge.adapters.firestore_errors import bounded, firestore_errors
from fluxfill.bridge.adapters.user_slots_store import FirestoreUserSlots
from fluxfill.bridge.contract import ErrorCode, JobStatus, firestore_id_allowed
from fluxfill.bridge.errors import RetryCause
from fluxfill.bridge.ports import Claim, ClaimKind, Heartbeat, JobRef

T = TypeVar("T")
# Pub/Sub keeps an unacked message at most 7 days: a ledger entry older than that guards nothing
# (`expireAt` is there for a Firestore TTL policy to delete it).
LEDGER_RETENTION = timedelta(days=8)
# Documents remembered at most (a bridge runs a few jobs at once; one that lost its claim is forgotten only
# when this many came after it).
KNOWN_LIMIT = 256


class FirestoreSessions:
    """Session documents of one `google.cloud.firestore.Client`; with `user_slots` (a per-user limit), each
    claim also holds a slot of its user's (fluxfill.bridge.adapters.user_slots_store)."""

    def __init__(
        self,
        client: firestore.Client,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        user_slots: FirestoreUserSlots | None = None,
    ) -> None:
        self._client = client
        self._now = now
        self._slots = user_slots
        # Our running jobs' session documents as our own last read or write left them: a heartbeat, the final
        # write and a give-back start from there. A claim always reads (another bridge or the app may have
        # written), and only a claim that succeeded is remembered.
        self._known = KnownDocuments(client, now, KNOWN_LIMIT)

    def _change(self, path: str, action: str, decide: Decide[T]) -> T:
        return self._known.change(path, action, decide)

    def _slots_of(self, job: JobRef) -> FirestoreUserSlots | None:
        return self._slots if self._slots is not None and firestore_id_allowed(job.user) else None

    def claim(
        self,
        job: JobRef,
        *,
        claim_id: str,
        owner: str,
        lease_s: float,
        max_attempts: int,
        max_per_user: int = 0,
        made_by: datetime | None = None,
        job_id: str | None = None,
    ) -> Claim:
        """See SessionStore.claim: with a limit, a slot of the user's first, then the session (refused
        unread by its rules when made after `made_by`: Firestore's create time is not among its fields)."""
        slots = self._slots_of(job) if max_per_user > 0 else None
        if slots is not None:
            running = slots.take(job.user, claim_id, lease_s, max_per_user)
            if running is not None:
                return Claim(ClaimKind.USER_AT_LIMIT, user_running=running)
        claimed = False
        try:
            result, after = compare_and_set(
                self._client,
                job.document,
                "claim the job",
                lambda document, now: sessions.claim(
                    document,
                    claim_id=claim_id,
                    owner=owner,
                    now=now,
                    lease_s=lease_s,
                    message_id=job.message_id,
                    max_attempts=max_attempts,
                    job_id=job_id,
                ),
                self._now,
                refuse=lambda made: sessions.remade(made, made_by),
            )
            claimed = result.kind is ClaimKind.CLAIMED
            if claimed:
                self._known.remember(job.document, after)
            return result
        finally:
            if slots is not None and not claimed:
                slots.give_back(job.user, claim_id)

    def heartbeat(
        self, job: JobRef, claim_id: str, lease_s: float, progress: tuple[int, int] | None
    ) -> Heartbeat:
        """See SessionStore.heartbeat; the user's slot is renewed with the lease, when due."""
        beat = self._change(
            job.document,
            "renew the lease",
            lambda document, now: sessions.heartbeat(
                document, claim_id, now, lease_s, progress, path=job.document
            ),
        )
        slots = self._slots_of(job)
        if slots is not None and beat.still_owner:
            slots.renew_if_due(job.user, claim_id, lease_s)
        return beat

    def holds_claim(self, job: JobRef, claim_id: str) -> bool:
        """See SessionStore.holds_claim: a plain read (strongly consistent), no write; what it read is what
        the final write starts from."""
        with firestore_errors("check the claim"):
            snapshot = self._client.document(job.document).get(**bounded())
        document = snapshot.to_dict() if snapshot.exists else None
        held = sessions.held_by(document, claim_id)
        self._known.remember(
            job.document, Known(document, snapshot.update_time, snapshot.create_time) if held else None
        )
        return held

    def release(self, job: JobRef, claim_id: str, reason: str, cause: RetryCause) -> None:
        """See SessionStore.release."""
        self._change(
            job.document,
            "give the job back",
            lambda document, now: (
                None,
                sessions.release(document, claim_id, now, reason, cause, path=job.document),
            ),
        )
        self._known.remember(job.document, None)
        self._free_slot(job, claim_id)

    def finish(self, job: JobRef, claim_id: str | None, status: JobStatus, fields: Mapping[str, Any]) -> bool:
        """See SessionStore.finish."""

        def decide(document: Mapping[str, Any] | None, now: datetime) -> tuple[bool, sessions.Update | None]:
            update = sessions.finish(document, claim_id, now, status, fields, path=job.document)
            return update is not None, update

        try:
            return self._change(job.document, f"record {status.value}", decide)
        finally:
            # Refused too (the job is then dead-lettered): the job has ended here either way.
            self._known.remember(job.document, None)
            self._free_slot(job, claim_id)

    def _free_slot(self, job: JobRef, claim_id: str | None) -> None:
        slots = self._slots_of(job)
        if slots is not None:
            slots.give_back(job.user, claim_id)


class FirestoreDeadLetterLedger:
    """The DeadLetterLedger port: one document per dead-lettered message id in `collection`."""

    def __init__(
        self,
        client: firestore.Client,
        collection: str,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._collection = client.collection(collection)
        self._now = now

    def recorded(self, message_id: str) -> bool:
        """See DeadLetterLedger.recorded; an id that cannot name a document is never recorded."""
        # Pub/Sub's ids are digits, but a push envelope is only JSON: an id may not name a document.
        if not firestore_id_allowed(message_id):
            return False
        with firestore_errors("read the dead-letter ledger"):
            return bool(self._collection.document(message_id).get(**bounded()).exists)

    def record(self, message_id: str, code: ErrorCode) -> None:
        """See DeadLetterLedger.record."""
        if not firestore_id_allowed(message_id):
            return
        now = self._now()
        entry = {"code": code.value, "deadLetteredAt": now, "expireAt": now + LEDGER_RETENTION}
        with firestore_errors("write the dead-letter ledger"):
            self._collection.document(message_id).set(entry, **bounded())


class FirestoreRuntimeConfig:
    """The RuntimeConfigSource port: one document's fields, None when it does not exist."""

    def __init__(self, client: firestore.Client, path: str) -> None:
        self._document = client.document(path)

    def read(self) -> Mapping[str, Any] | None:
        """See RuntimeConfigSource.read."""
        with firestore_errors("read the runtime config"):
            snapshot = self._document.get(**bounded())
        return snapshot.to_dict() if snapshot.exists else None
