"""Each user's running-job slots in Firestore, changed by compare-and-set, never inside a transaction.

Why compare-and-set: the slots were first kept in the claim's transaction, and transactions lock what they
read; every claim of a flooding user read the same document, and two that read it and then both wrote
deadlocked until Firestore's lock timeout (the emulator made four bridges' claims wait 10 s each, round after
round). The sessions' changes are compare-and-set now too. Here a change computes the new
document with fluxfill.bridge.user_slots and writes it by compare-and-set
(fluxfill.bridge.adapters.compare_and_set): nobody waits on a lock.

The claim takes a slot first and then claims the session (giving the slot back if that finds the job
finished, running or failing): a bridge that dies in between leaves a slot that lapses with its lease.
"""

import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from google.cloud import firestore

from fluxfill.bridge import user_slots
from fluxfill.bridge.adapters.compare_and_set import compare_and_set
from fluxfill.bridge.adapters.firestore_errors import bounded, firestore_errors
from fluxfill.bridge.errors import SessionTransientError

logger = structlog.get_logger(__name__)
Change = Callable[[Mapping[str, Any] | None, datetime], dict[str, Any] | None]


class FirestoreUserSlots:
    """The slots of each user in `collection` (one document per user)."""

    def __init__(
        self,
        client: firestore.Client,
        collection: str,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client = client
        self._collection = collection
        self._now = now
        # When each of our claims' slots lapses, as last written: a heartbeat touches the user's document only
        # when its slot needs renewing, not at every progress write.
        self._expiry: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def _change(self, user: str, action: str, change: Change) -> dict[str, Any] | None:
        """Apply `change` by compare-and-set; the document written, or None when `change` wrote nothing.
        `update` replaces the `claims` map as a whole (lapsed entries dropped)."""

        def decide(slots: Mapping[str, Any] | None, now: datetime) -> tuple[dict[str, Any] | None, Any]:
            new = change(slots, now)
            return new, new

        written, _ = compare_and_set(self._client, f"{self._collection}/{user}", action, decide, self._now)
        return written

    def running(self, user: str) -> int:
        """See SlotCounter.running."""
        with firestore_errors("read the user's slots"):
            snapshot = self._client.document(f"{self._collection}/{user}").get(**bounded())
        return len(user_slots.live_claims(snapshot.to_dict() if snapshot.exists else None, self._now()))

    def take(self, user: str, claim_id: str, lease_s: float, limit: int) -> int | None:
        """Take a slot for `claim_id`: None when taken, else how many live slots hold the user back."""
        running = 0

        def take(slots: Mapping[str, Any] | None, now: datetime) -> dict[str, Any] | None:
            nonlocal running
            running = len(user_slots.live_claims(slots, now))
            return user_slots.take(slots, claim_id, now, lease_s, limit)

        if self._change(user, "take a slot of the user's", take) is None:
            return running
        with self._lock:
            self._expiry[claim_id] = self._now() + timedelta(seconds=lease_s)
        return None

    def renew_if_due(self, user: str, claim_id: str, lease_s: float) -> None:
        """Extend the slot once half its lease is spent; a failure is logged (the next heartbeat retries)."""
        with self._lock:
            expires = self._expiry.get(claim_id)
        if expires is None or expires - self._now() > timedelta(seconds=lease_s / 2):
            return
        try:
            self._change(
                user,
                "renew a slot of the user's",
                lambda slots, now: user_slots.renew(slots, claim_id, now, lease_s),
            )
        except SessionTransientError as error:
            logger.warning(
                "could not renew the user's slot; trying again at the next heartbeat", error=str(error)
            )
            return
        with self._lock:
            if claim_id in self._expiry:
                self._expiry[claim_id] = self._now() + timedelta(seconds=lease_s)

    def give_back(self, user: str, claim_id: str | None) -> None:
        """Free the claim's slot; a failure is logged (the slot then lapses with its lease)."""
        if claim_id is None:
            return
        with self._lock:
            held = self._expiry.pop(claim_id, None)
        if held is None:
            return
        try:
            self._change(
                user, "free a slot of the user's", lambda slots, now: user_slots.drop(slots, claim_id, now)
            )
        except SessionTransientError as error:
            logger.warning("could not free the user's slot; it lapses with its lease", error=str(error))
