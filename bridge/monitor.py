"""Watch a running job: renew its lease, write progress at most once per interval, notice a cancel.

A run whose lease cannot be renewed for LEASE_LOSS_FRACTION of the lease stops: by then another bridge may
be about to take the job over, and a holder that cannot renew must stop rather than hope.

A job still running past `max_age_s` (its deadline and a margin: more than any job takes) has a thread that
hangs in a call that never returns. Its heartbeats would keep its claim alive for ever, every other delivery
of the job finding it busy: the session would stay `processing` for good. So the monitor stops renewing
(the lease lapses and another bridge takes the job over; what the hung thread may still write is fenced by
its claim) and reports the job `overdue`, which the bridge's /healthz turns into a failed liveness check.

A job's calls to its session document go one at a time: the heartbeats, the claim check before the upload
and (after the monitor has ended) the final write. When these were transactions, two on one Firestore
document waited on each other's locks: a heartbeat still in flight beside the final write stalled jobs for
seconds on the emulator, then reported the lease lost of a job already done. With compare-and-set the loser
would read again: one at a time still spares that round.
"""

import math
import threading
import time
from types import TracebackType

import structlog

from fluxfill.bridge.errors import LeaseLostError, RetryableError, SessionRefusedError
from fluxfill.bridge.ports import JobRef, RunControl, SessionStore

logger = structlog.get_logger(__name__)
# How often the watcher wakes to notice the bridge's hard stop between heartbeats.
_WAKE_S = 0.05
# Failed renewals for this share of the lease stop the run, leaving margin for clocks and the final writes.
LEASE_LOSS_FRACTION = 0.75
# Past its deadline (which starts with inference), what a job may still take: its download and decode before,
# its upload and final write after (see hung_after_s).
JOB_OVERRUN_S = 120.0
# At the end, how long a heartbeat in flight is waited for before the final write goes ahead anyway (a
# heartbeat that hangs must not hold the job's end: the final write is fenced by the claim either way).
END_WAIT_S = 2.0


def hung_after_s(job_deadline_s: float, upload_grace_s: float) -> float:
    """How long after its claim a job is taken for hung: its deadline (from inference), the wait for its
    uploads before, and JOB_OVERRUN_S for the rest of its work."""
    return job_deadline_s + upload_grace_s + JOB_OVERRUN_S


class JobMonitor:
    """A thread per running job; the run is stopped through `control.cancel` when it must end early."""

    def __init__(
        self,
        sessions: SessionStore,
        job: JobRef,
        claim_id: str,
        *,
        lease_s: float,
        interval_s: float,
        control: RunControl,
        hard_stop: threading.Event,
        max_age_s: float = math.inf,
    ) -> None:
        self._sessions = sessions
        self._job = job
        self._claim_id = claim_id
        self._renewed_at = self._started_at = time.monotonic()
        self._max_age_s = max_age_s
        self._lease_s = lease_s
        self._interval_s = interval_s
        self._control = control
        self._hard_stop = hard_stop
        self._finished = threading.Event()
        self._calls = threading.Lock()  # held by each call to the session document
        self._lock = threading.Lock()
        self._progress: tuple[int, int] | None = None
        self._written: tuple[int, int] | None = None
        self.cancel_requested = False  # by the app, through the session document
        self.lease_lost = False
        # The lease was lost to what the session document says (another claim, or the document gone), not to
        # unanswered heartbeats or a hung run: this run's claim is over for certain, its user's slot free.
        self.superseded = False
        self.shutdown = False
        self.overdue = False  # past max_age_s: taken for hung, its claim left to lapse
        self.steps_seen: list[tuple[int, int]] = []
        self._thread = threading.Thread(target=self._watch, name=f"monitor-{job.message_id}", daemon=True)

    @property
    def message_id(self) -> str:
        """The delivery this job runs for."""
        return self._job.message_id

    def report_progress(self, step: int, total: int) -> None:
        """Called by the model adapter per step; written by the watcher thread, throttled."""
        with self._lock:
            self._progress = (step, total)
            self.steps_seen.append((step, total))

    def _watch(self) -> None:
        next_beat = time.monotonic() + self._interval_s
        beating: threading.Thread | None = None
        while not self._finished.wait(_WAKE_S):
            if self._hard_stop.is_set() and not self.shutdown:
                self.shutdown = True
                self._control.cancel.set()
            if not self.overdue and time.monotonic() - self._started_at > self._max_age_s:
                self._give_up_as_hung()
            if self.overdue:
                continue  # no more heartbeats: the claim lapses
            if beating is not None and beating.is_alive():
                # A heartbeat that hangs (Firestore frozen) is a failed one: the bound holds all the same.
                unrenewed_s = time.monotonic() - self._renewed_at
                if unrenewed_s >= LEASE_LOSS_FRACTION * self._lease_s:
                    self._lose_lease(
                        f"a heartbeat has hung; the lease was not renewed for {unrenewed_s:.0f} s"
                    )
                continue
            if time.monotonic() >= next_beat:
                beating = threading.Thread(
                    target=self._beat, name=f"heartbeat-{self._job.message_id}", daemon=True
                )
                beating.start()
                next_beat = time.monotonic() + self._interval_s

    def confirm_claim(self) -> bool:
        """Is the claim still ours? Read now, after any heartbeat in flight (one read: the lease is the
        heartbeats' to renew). A heartbeat in flight that does not end within the lease-loss bound is a lost
        lease, as the watcher would find it."""
        if not self._calls.acquire(timeout=LEASE_LOSS_FRACTION * self._lease_s):
            raise LeaseLostError("a heartbeat has hung; the claim could not be checked")
        try:
            return self._sessions.holds_claim(self._job, self._claim_id)
        finally:
            self._calls.release()

    def _beat(self) -> None:
        with self._lock:
            progress = self._progress if self._progress != self._written else None
        try:
            with self._calls:
                if self._finished.is_set():
                    return  # the job is ending: its final write is next
                beat = self._sessions.heartbeat(self._job, self._claim_id, self._lease_s, progress)
        except (RetryableError, SessionRefusedError) as error:
            # Refused (Firestore's InvalidArgument) is not expected of a heartbeat, which always fits
            # (fluxfill.bridge.sessions.fitted); it counts as a missed one all the same, never a dead thread.
            unrenewed_s = time.monotonic() - self._renewed_at
            if unrenewed_s < LEASE_LOSS_FRACTION * self._lease_s:
                # A missed heartbeat only shortens the lease margin; the next one tries again.
                logger.warning("heartbeat failed", error=str(error), unrenewed_s=round(unrenewed_s, 1))
                return
            self._lose_lease(f"the lease was not renewed for {unrenewed_s:.0f} s: {error}")
            return
        if beat.renewed:  # a heartbeat that only read leaves the lease as it was: its bound still counts
            self._renewed_at = time.monotonic()
        if progress is not None:
            self._written = progress
        if beat.cancel_requested and not self.cancel_requested:
            logger.info("cancel requested by the app")
            self.cancel_requested = True
            self._control.cancel.set()
        if not beat.still_owner:
            self.superseded = True
            self._lose_lease(
                "the app deleted the session" if beat.session_gone else "another claim replaced ours"
            )

    def _give_up_as_hung(self) -> None:
        age = time.monotonic() - self._started_at
        self.overdue = True
        logger.error(
            "job overdue: its thread is taken for hung; its claim is left to lapse so that another bridge "
            "takes the job over, and /healthz fails so that this bridge is restarted",
            age_s=round(age),
            max_age_s=self._max_age_s,
        )
        self._lose_lease(f"the job ran for {age:.0f} s, past the {self._max_age_s:g} s any job may take")

    def _lose_lease(self, reason: str) -> None:
        if not self.lease_lost:
            logger.warning("lease lost; stopping the run and writing nothing", reason=reason)
            self.lease_lost = True
            self._control.cancel.set()

    def __enter__(self) -> "JobMonitor":
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._finished.set()
        self._thread.join()
        # No heartbeat starts any more; one in flight is waited for, so that the final write goes alone.
        if self._calls.acquire(timeout=END_WAIT_S):
            self._calls.release()
