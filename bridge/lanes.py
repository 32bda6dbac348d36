"""Priority across the fleet: urgent and bulk jobs arrive on their own subscriptions and share one bridge's
slots through this gate.

Each subscription's stream holds at most `max_concurrent_jobs` messages, so a bridge never hoards work; the
gate decides which held message runs when a slot frees: an urgent one, unless bulk's reserved turn has come.
While both wait, bulk gets one grant in every round(1 / bulk_share), so a steady stream of urgent jobs slows
bulk work down but never stops it. An urgent job therefore waits for at most one running job per slot.
"""

import threading

from fluxfill.bridge.contract import BULK_LANE, URGENT_LANE
from fluxfill.bridge.readiness import STOP_CHECK_S


class SlotGate:
    """`slots` run slots shared by the urgent and bulk lanes."""

    def __init__(self, slots: int, bulk_share: float) -> None:
        self._free = slots
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

    def acquire(self, lane: str, stop: threading.Event) -> bool:
        """Block until `lane` may use a slot (True), or `stop` is set (False, seen within STOP_CHECK_S)."""
        with self._changed:
            self._waiting[lane] += 1
            try:
                while not stop.is_set():
                    if self._may_run(lane):
                        self._grant(lane)
                        return True
                    self._changed.wait(timeout=STOP_CHECK_S)
                return False
            finally:
                self._waiting[lane] -= 1
                # A waiter leaving may hand the turn to the other lane.
                self._changed.notify_all()

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
