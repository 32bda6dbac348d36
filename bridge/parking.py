"""A job whose user is at the per-user limit is parked in Firestore until one of the user's jobs ends.

Why parked and not sent round Pub/Sub: a copy published again at once circulates for as long as its user's
flood lasts, so every other user's job queues behind the whole flood's copies passing through every bridge
(measured: 6 to 9 job-durations behind 300 jobs of one user, or a third of the fleet's CPU spent copying). A
parked job is touched twice: parked once, released once, when a slot of its user's frees.

The protocol (fluxfill.bridge.adapters.parking_store keeps it in Firestore):
- park: the job's message is written under its user and session (a second message of the same session
  replaces the first: one job, unless it was first published earlier: `supersedes`), then the message is
  acked. A park that fails nacks the message instead.
- release: when a job of the user's ends, the bridge that ran it publishes the user's oldest parked jobs, as
  many as the user has free slots. Each release is won by one bridge (compare-and-set on the parked
  document), published, then deleted; a crash in between publishes it once more, which the claim protocol
  runs once.
- the race: a bridge finds the user at the limit, and before its park lands the user's last job ends and
  finds nothing parked. So a park looks at the user's slots once more right after writing.
- the sweep: every bridge releases, now and then, the parked jobs of users with free slots, which covers
  slots that lapsed with a crashed bridge's leases and releases that died half-way.
"""

from datetime import datetime

import structlog

from fluxfill.bridge.contract import JobMessage
from fluxfill.bridge.deferral import deferral_attributes, first_published
from fluxfill.bridge.errors import RetryableError
from fluxfill.bridge.metrics import BridgeMetrics
from fluxfill.bridge.outcome import Delivery
from fluxfill.bridge.ports import ParkedJob, ParkingLot, SlotCounter

logger = structlog.get_logger(__name__)
# Looks for the user's next parked jobs after releases lost to other bridges, at most this many times (each
# loss means another bridge published a job of the user's; the sweep covers what is left).
RELEASE_ROUNDS = 3


class Parking:
    """Parks jobs over their user's limit and releases them as the user's slots free."""

    def __init__(self, lot: ParkingLot, slots: SlotCounter, limit: int, metrics: BridgeMetrics) -> None:
        self._lot = lot
        self._slots = slots
        self._limit = limit
        self._metrics = metrics

    def park(self, job: JobMessage, delivery: Delivery) -> bool:
        """Keep the job aside; False when a job of its session first published later is parked (`supersedes`:
        this one is not kept); raises RetryableError when it could not be written (nack it then)."""
        if not self._lot.park(parked(job, delivery)):
            return False
        self._metrics.parking.labels("parked").inc()
        self.release_free(job.userId, slots_first=True)
        return True

    def release_free(self, user: str, *, slots_first: bool = False) -> int:
        """Publish as many of the user's parked jobs as the user has free slots, oldest first; how many were
        published. Never raises: what is not released now is released by a later end or the sweep.

        `slots_first`: read the slots before looking for parked jobs (a park: its user is usually still at the
        limit, so one read and no query); otherwise the parked jobs first (a job's end: most users have none).
        """
        try:
            if slots_first:
                free = self._limit - self._slots.running(user)
                parked = self._lot.oldest(user, free) if free > 0 else []
            else:
                parked = self._lot.oldest(user, self._limit)
                free = self._limit - self._slots.running(user) if parked else 0
            released = self._release_oldest(user, parked, free)
        except RetryableError as error:
            logger.warning("could not release parked jobs; a later end or the sweep will", error=str(error))
            return 0
        if released:
            self._metrics.parking.labels("released").inc(released)
            logger.info("released parked jobs", userId=user, released=released)
        return released

    def _release_oldest(self, user: str, parked: list[ParkedJob], free: int) -> int:
        """Release `parked` (the user's oldest) into `free` slots; how many were released. A release lost
        (another bridge released the job first, or it is gone) leaves its slot to the user's next parked job,
        looked for again: the jobs first read may be all there were room for."""
        released = 0
        for _ in range(RELEASE_ROUNDS):
            lost = False
            for candidate in parked:
                if released >= free:
                    return released
                if self._lot.release(candidate):
                    released += 1
                else:
                    lost = True
            if not lost or released >= free:
                break
            parked = self._lot.oldest(user, free - released)
        return released

    def sweep(self) -> int:
        """release_free for every user with parked jobs; how many were published. Never raises."""
        try:
            users = self._lot.users()
        except RetryableError as error:
            logger.warning("could not list the parked jobs' users", error=str(error))
            return 0
        return sum(self.release_free(user) for user in users)


def supersedes(job_first: datetime | None, parked_first: datetime | None) -> bool:
    """Whether a job first published at `job_first` takes the place of its session's parked job, first
    published at `parked_first`: yes, unless it was published earlier (a time not known: yes). A copy of the
    parked job (the same time) replaces it, so a job parked again while its release is under way is not lost
    with the document the release deletes. An earlier job is a deleted session's, the parked one the job of
    the session made again under its id (replaced, the earlier would be refused at its claim and the later
    lost), or the app's earlier word on the same session."""
    return job_first is None or parked_first is None or job_first >= parked_first


def parked(job: JobMessage, delivery: Delivery) -> ParkedJob:
    """What is kept of a job's message: published again as it came, with the deferral attributes."""
    return ParkedJob(
        user=job.userId,
        session=job.sessionId,
        data=delivery.data,
        attributes={**delivery.attributes, **deferral_attributes(delivery)},
        lane=job.priority,
        first_published=first_published(delivery),
    )
