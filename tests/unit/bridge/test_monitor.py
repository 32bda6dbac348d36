"""The job monitor's lease-loss bound, against heartbeats scripted answer by answer.

The bound counts from the last heartbeat that renewed the lease: a heartbeat that only read (no renewal due,
fluxfill.bridge.sessions.heartbeat) leaves the lease where it was, so an outage after a run of such reads is
nearer the lease's end than the last answer says.
"""

import threading
import time
from collections.abc import Callable

from fluxfill.bridge.errors import SessionTransientError
from fluxfill.bridge.monitor import LEASE_LOSS_FRACTION, JobMonitor
from fluxfill.bridge.ports import Heartbeat, JobRef, RunControl

LEASE_S = 2.0
INTERVAL_S = 0.05


class ScriptedSessions:
    """The monitor's SessionStore calls: each heartbeat answered by `answer(seconds since the first)`; the
    progress each one was given to write, in `progress_given`."""

    def __init__(self, answer: Callable[[float], Heartbeat]) -> None:
        self._answer = answer
        self.started: float | None = None  # when the first heartbeat came
        self.progress_given: list[tuple[int, int] | None] = []

    def heartbeat(
        self, job: JobRef, claim_id: str, lease_s: float, progress: tuple[int, int] | None
    ) -> Heartbeat:
        now = time.monotonic()
        self.started = self.started if self.started is not None else now
        self.progress_given.append(progress)
        return self._answer(now - self.started)

    def holds_claim(self, job: JobRef, claim_id: str) -> bool:
        return True


def monitor_of(sessions: ScriptedSessions, control: RunControl) -> JobMonitor:
    return JobMonitor(
        sessions,  # type: ignore[arg-type]
        JobRef("users/u/sessions/s", "m1"),
        "claim-1",
        lease_s=LEASE_S,
        interval_s=INTERVAL_S,
        control=control,
        hard_stop=threading.Event(),
    )


def renewing(_: float) -> Heartbeat:
    return Heartbeat(cancel_requested=False, still_owner=True, renewed=True)


def lost_after_s(answer: Callable[[float], Heartbeat], within_s: float) -> float:
    """Seconds from the first heartbeat until the monitor declared the lease lost (inf: not within
    `within_s` of its start)."""
    control = RunControl(deadline=float("inf"))
    sessions = ScriptedSessions(answer)
    with monitor_of(sessions, control) as monitor:
        lost = control.cancel.wait(within_s)
        lost_at = time.monotonic()
    if not lost or not monitor.lease_lost or sessions.started is None:
        return float("inf")
    return lost_at - sessions.started


def renewed_once_then_read_then_failing(read_for_s: float) -> Callable[[float], Heartbeat]:
    def answer(since_first_s: float) -> Heartbeat:
        if since_first_s == 0:
            return Heartbeat(cancel_requested=False, still_owner=True, renewed=True)
        if since_first_s < read_for_s:
            return Heartbeat(cancel_requested=False, still_owner=True)
        raise SessionTransientError("firestore unavailable")

    return answer


def test_failed_heartbeats_lose_the_lease_at_the_bound_after_the_last_renewal() -> None:
    """Reads answered for 1.2 s after the renewal, then Firestore away: the lease is lost at 1.5 s (three
    quarters of 2 s) after the renewal, not 1.5 s after the last answer (2.7 s)."""
    bound_s = LEASE_LOSS_FRACTION * LEASE_S
    lost_s = lost_after_s(renewed_once_then_read_then_failing(read_for_s=1.2), within_s=5.0)
    assert bound_s <= lost_s < bound_s + 0.9  # counted from the last answer: 2.7 s


def test_heartbeats_that_renew_keep_the_lease() -> None:
    assert lost_after_s(renewing, within_s=LEASE_S) == float("inf")


def test_progress_is_given_to_one_heartbeat_until_it_changes() -> None:
    """A slow step (seconds on an L4, twenty heartbeats) writes its progress once: each write of the session
    reaches every listener the app keeps on it."""
    sessions = ScriptedSessions(renewing)
    monitor = monitor_of(sessions, RunControl(deadline=float("inf")))
    with monitor:
        monitor.report_progress(1, 4)
        time.sleep(20 * INTERVAL_S)
        monitor.report_progress(2, 4)
        time.sleep(20 * INTERVAL_S)
    assert [given for given in sessions.progress_given if given is not None] == [(1, 4), (2, 4)]
    assert len(sessions.progress_given) > 10


def test_heartbeats_that_fail_from_the_start_lose_the_lease_at_the_bound() -> None:
    def failing(_: float) -> Heartbeat:
        raise SessionTransientError("firestore unavailable")

    # The bound counts from the monitor's start, about an interval before the first (failed) heartbeat.
    bound_s = LEASE_LOSS_FRACTION * LEASE_S
    assert bound_s - 2 * INTERVAL_S <= lost_after_s(failing, within_s=5.0) < bound_s + 0.9
