"""Priority across the fleet: urgent and bulk jobs arrive on their own subscriptions and share one bridge's
slots through this gate.

In push mode the pushes beyond the slots wait here, by their jobs' priority, for up to `push_slot_wait_s`
(fluxfill.bridge.http_app). In pull mode a bridge holds at most `max_concurrent_jobs` + 1 messages of each
subscription (fluxfill.bridge.pull): the running ones and one waiting at this gate. Without that one, a
lane's next message is pulled only after its running job is acked, by when the other lane's waiting job
has taken the slot: urgent and bulk would merely alternate.
When a slot frees, the gate chooses among the waiting: an urgent job, unless bulk's reserved turn has come.
While both wait, bulk gets one grant in every round(1 / bulk_share), so a steady stream of urgent jobs slows
bulk work down but never stops it. An urgent job waits for at most one running job to end; the cost is one
job per lane held by a busy bridge while another may be idle, for at most that long.
"""

import threading
import time

from prometheus_client import Gauge

from fluxfill.bridge.contract import BULK_LANE, URGENT_LANE, InvalidJobError, parse_job
from fluxfill.bridge.readiness import STOP_CHECK_S


def lane_of(data: bytes) -> str:
    """The lane of a message's job: its priority (bulk for a message that is no job, which the handler
    refuses)."""
    try:
        return parse_job(data).priority
    except InvalidJobError:
        return BULK_LANE


class SlotGate:
    """`slots` run slots shared by the urgent and bulk lanes."""

    def __init__(self, slots: int, bulk_share: float, waiting: Gauge | None = None) -> None:
        self._free = slots
        self._waiting_gauge = waiting
        self._bulk_every = max(1, round(1 / bulk_share))
        self._waiting = {URGENT_LANE: 0, BULK_LANE: 0}
        # Urgent grants in a row while bulk work waited; bulk's turn comes at _bulk_every - 1.
        self._urgent_in_a_row = 0
        self._changed = threading.Condition()

    def _bulk_turn(self) -> bool:
        return self._waiting[BULK_LANE] > 0 and self._urgent_in_a_row >= self._bulk_every - 1

    def _may_run(self, lane: str) -> bool:
        if self._free <= 0:
            return False
        if lane == URGENT_LANE:
            return not self._bulk_turn()
        return self._waiting[URGENT_LANE] == 0 or self._bulk_turn()

    def acquire(self, lane: str, stop: threading.Event, timeout_s: float | None = None) -> bool:
        """Block until `lane` may use a slot (True), or `stop` is set (False, seen within STOP_CHECK_S), or
        `timeout_s` has passed (False)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._changed:
            self._waiting[lane] += 1
            self._show(lane)
            try:
                while not stop.is_set():
                    if self._may_run(lane):
                        self._grant(lane)
                        return True
                    left = (
                        STOP_CHECK_S if deadline is None else min(STOP_CHECK_S, deadline - time.monotonic())
                    )
                    if left <= 0:
                        return False
                    self._changed.wait(timeout=left)
                return False
            finally:
                self._waiting[lane] -= 1
                self._show(lane)
                # A waiter leaving may hand the turn to the other lane.
                self._changed.notify_all()

    def _show(self, lane: str) -> None:
        if self._waiting_gauge is not None:
            self._waiting_gauge.labels(lane).set(self._waiting[lane])

    def _grant(self, lane: str) -> None:
        self._free -= 1
        if lane == BULK_LANE:
            self._urgent_in_a_row = 0
        elif self._waiting[BULK_LANE] > 0:
            self._urgent_in_a_row += 1

    def release(self) -> None:
        """A job ended: its slot is free."""
        with self._changed:
            self._free += 1
            self._changed.notify_all()
