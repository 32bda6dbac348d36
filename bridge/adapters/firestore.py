"""The SessionStore port over Firestore: every change is a transaction applying fluxfill.bridge.sessions."""

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.api_core import exceptions as api
from google.cloud import firestore

from fluxfill.bridge import sessions, user_slots
from fluxfill.bridge.contract import ErrorCode, JobStatus, firestore_id_allowed
from fluxfill.bridge.errors import SessionRefusedError, SessionTransientError
from fluxfill.bridge.ports import Claim, ClaimKind, Heartbeat, JobRef

T = TypeVar("T")
Decision = Callable[
    [Mapping[str, Any] | None, Mapping[str, Any] | None, datetime],
    tuple[T, sessions.Update | None, dict[str, Any] | None],
]
# Pub/Sub keeps an unacked message at most 7 days: a ledger entry older than that guards nothing
# (`expireAt` is there for a Firestore TTL policy to delete it).
LEDGER_RETENTION = timedelta(days=8)
# Contention surfaces as this ValueError once the client's own retries are spent (see FACTS.md).
_CONTENTION = "Failed to commit transaction"


@contextmanager
def firestore_errors(action: str) -> Iterator[None]:
    """The boundary: Firestore failures, contention included, become SessionTransientError.

    InvalidArgument is the exception: Firestore refuses the request itself (a reserved or malformed path),
    and will refuse it however often it is retried.
    """
    try:
        yield
    except api.InvalidArgument as error:
        raise SessionRefusedError(f"firestore refused to {action}: {error.message}") from None
    except (api.GoogleAPICallError, api.RetryError) as error:
        raise SessionTransientError(f"firestore failed to {action}: {error}") from None
    except ValueError as error:
        if _CONTENTION not in str(error):
            raise
        raise SessionTransientError(
            f"firestore transaction to {action} lost to contention: {error}"
        ) from None


class FirestoreSessions:
    """Session documents of one `google.cloud.firestore.Client`, and the users' slot documents beside them
    (`user_slots_collection`; empty when no per-user limit is set: then they are never read)."""

    def __init__(
        self,
        client: firestore.Client,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        user_slots_collection: str = "",
    ) -> None:
        self._client = client
        self._now = now
        self._user_slots = user_slots_collection
        # When each of our claims' slots lapses, as last written: a heartbeat reads the user's document
        # only when its slot needs renewing, not at every progress write.
        self._slot_expiry: dict[str, datetime] = {}
        self._slot_lock = threading.Lock()

    def _transact(self, job: JobRef, action: str, decide: Decision[T], with_slots: bool = True) -> T:
        """Read the session (and its user's slots), decide, write both in one transaction."""
        session = self._client.document(job.document)
        slots = (
            self._client.document(f"{self._user_slots}/{job.user}")
            if with_slots and self._user_slots and job.user and firestore_id_allowed(job.user)
            else None
        )

        @firestore.transactional
        def run(transaction: firestore.Transaction) -> T:
            document = _read(session, transaction)
            slots_document = _read(slots, transaction) if slots is not None else None
            result, update, slots_update = decide(document, slots_document, self._now())
            if update is not None:
                transaction.set(session, {str(key): value for key, value in update.items()}, merge=True)
            if slots is not None and slots_update is not None:
                # The whole document: a merge would keep the map entries the update leaves out.
                transaction.set(slots, slots_update)
            return result

        with firestore_errors(action):
            return run(self._client.transaction(max_attempts=5))  # type: ignore[no-any-return]

    def claim(
        self,
        job: JobRef,
        *,
        claim_id: str,
        owner: str,
        lease_s: float,
        max_attempts: int,
        max_per_user: int = 0,
    ) -> Claim:
        """See SessionStore.claim.

        With a limit, the user's slots are first read outside any transaction: a user at the limit (a flood
        being deferred) then costs one plain read, and transactions, which lock the document they read, are
        left to the claims that may succeed (they check again).
        """
        if max_per_user > 0:
            running = self._running(job)
            if running >= max_per_user:
                return Claim(ClaimKind.USER_AT_LIMIT, user_running=running)
        claim = self._transact(
            job,
            "claim the job",
            lambda document, slots, now: user_slots.claim(
                document,
                slots,
                limit=max_per_user,
                claim_id=claim_id,
                owner=owner,
                now=now,
                lease_s=lease_s,
                message_id=job.message_id,
                max_attempts=max_attempts,
            ),
            with_slots=max_per_user > 0,
        )
        if claim.kind is ClaimKind.CLAIMED and max_per_user > 0:
            with self._slot_lock:
                self._slot_expiry[claim_id] = self._now() + timedelta(seconds=lease_s)
        return claim

    def _running(self, job: JobRef) -> int:
        """How many live slots the user holds now (0 when the slots cannot be read here)."""
        if not (self._user_slots and job.user and firestore_id_allowed(job.user)):
            return 0
        with firestore_errors("read the user's running jobs"):
            snapshot = self._client.document(f"{self._user_slots}/{job.user}").get()
        return len(user_slots.live_claims(snapshot.to_dict() if snapshot.exists else None, self._now()))

    def _slot_due(self, claim_id: str, lease_s: float) -> bool:
        with self._slot_lock:
            expires = self._slot_expiry.get(claim_id)
        return expires is not None and expires - self._now() <= timedelta(seconds=lease_s / 2)

    def _slot_renewed(self, claim_id: str, lease_s: float) -> None:
        with self._slot_lock:
            if claim_id in self._slot_expiry:
                self._slot_expiry[claim_id] = self._now() + timedelta(seconds=lease_s)

    def _slot_freed(self, claim_id: str | None) -> None:
        with self._slot_lock:
            self._slot_expiry.pop(claim_id or "", None)

    def heartbeat(
        self, job: JobRef, claim_id: str, lease_s: float, progress: tuple[int, int] | None
    ) -> Heartbeat:
        """See SessionStore.heartbeat."""
        due = self._slot_due(claim_id, lease_s)
        beat = self._transact(
            job,
            "renew the lease",
            lambda document, slots, now: user_slots.heartbeat(
                document, slots, claim_id=claim_id, now=now, lease_s=lease_s, progress=progress
            ),
            with_slots=due,
        )
        if due and beat.still_owner:
            self._slot_renewed(claim_id, lease_s)
        return beat

    def release(self, job: JobRef, claim_id: str, reason: str) -> None:
        """See SessionStore.release."""
        self._slot_freed(claim_id)
        self._transact(
            job,
            "give the job back",
            lambda document, slots, now: (
                None,
                sessions.release(document, claim_id, now, reason),
                user_slots.drop(slots, claim_id, now),
            ),
        )

    def finish(self, job: JobRef, claim_id: str | None, status: JobStatus, fields: Mapping[str, Any]) -> bool:
        """See SessionStore.finish."""

        def decide(
            document: Mapping[str, Any] | None, slots: Mapping[str, Any] | None, now: datetime
        ) -> tuple[bool, sessions.Update | None, dict[str, Any] | None]:
            update = sessions.finish(document, claim_id, now, status, fields)
            return update is not None, update, user_slots.drop(slots, claim_id, now)

        self._slot_freed(claim_id)
        return self._transact(job, f"record {status.value}", decide, with_slots=claim_id is not None)


def _read(reference: Any, transaction: firestore.Transaction) -> dict[str, Any] | None:
    snapshot = reference.get(transaction=transaction)
    return snapshot.to_dict() if snapshot.exists else None


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
            return bool(self._collection.document(message_id).get().exists)

    def record(self, message_id: str, code: ErrorCode) -> None:
        """See DeadLetterLedger.record."""
        if not firestore_id_allowed(message_id):
            return
        now = self._now()
        entry = {"code": code.value, "deadLetteredAt": now, "expireAt": now + LEDGER_RETENTION}
        with firestore_errors("write the dead-letter ledger"):
            self._collection.document(message_id).set(entry)


class FirestoreRuntimeConfig:
    """The RuntimeConfigSource port: one document's fields, None when it does not exist."""

    def __init__(self, client: firestore.Client, path: str) -> None:
        self._document = client.document(path)

    def read(self) -> Mapping[str, Any] | None:
        """See RuntimeConfigSource.read."""
        with firestore_errors("read the runtime config"):
            snapshot = self._document.get()
        return snapshot.to_dict() if snapshot.exists else None
