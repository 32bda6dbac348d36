"""The slot gate: urgent work first, a reserved share for bulk, a stop that frees every waiter."""

import threading
import time

from fluxfill.bridge.lanes import SlotGate

URGENT, BULK = "urgent", "bulk"


class Waiters:
    """Threads waiting on the gate, each recording its lane when granted."""

    def __init__(self, gate: SlotGate) -> None:
        self.gate = gate
        self.stop = threading.Event()
        self.granted: list[str] = []
        self._lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def add(self, lane: str) -> None:
        def wait() -> None:
            if self.gate.acquire(lane, self.stop):
                with self._lock:
                    self.granted.append(lane)

        thread = threading.Thread(target=wait)
        thread.start()
        self.threads.append(thread)

    def wait_granted(self, count: int) -> None:
        deadline = time.monotonic() + 5
        while len(self.granted) < count:
            assert time.monotonic() < deadline, f"granted {self.granted}, expected {count}"
            time.sleep(0.005)

    def settle(self) -> None:
        """Give the waiters time to block (a grant made now would show up)."""
        time.sleep(0.05)


def test_a_freed_slot_goes_to_urgent_work_before_bulk_work_that_waited_longer() -> None:
    gate = SlotGate(slots=1, bulk_share=0.1)
    waiters = Waiters(gate)
    assert gate.acquire(BULK, waiters.stop)  # a bulk job runs
    for _ in range(3):
        waiters.add(BULK)
    waiters.settle()
    waiters.add(URGENT)
    waiters.settle()
    assert waiters.granted == []
    gate.release()
    waiters.wait_granted(1)
    assert waiters.granted == [URGENT]
    waiters.stop.set()


def test_bulk_gets_its_reserved_share_while_urgent_work_keeps_waiting() -> None:
    gate = SlotGate(slots=1, bulk_share=0.25)  # one grant in four
    waiters = Waiters(gate)
    assert gate.acquire(URGENT, waiters.stop)
    for _ in range(12):
        waiters.add(URGENT)
    for _ in range(3):
        waiters.add(BULK)
    waiters.settle()
    for count in range(1, 13):
        gate.release()
        waiters.wait_granted(count)
    assert waiters.granted[:8] == [URGENT, URGENT, URGENT, BULK, URGENT, URGENT, URGENT, BULK]
    assert waiters.granted.count(BULK) == 3
    waiters.stop.set()
    for thread in waiters.threads:
        thread.join()


def test_with_no_urgent_work_bulk_runs_in_every_slot() -> None:
    gate = SlotGate(slots=3, bulk_share=0.1)
    stop = threading.Event()
    assert all(gate.acquire(BULK, stop) for _ in range(3))


def test_a_stop_releases_every_waiter_without_a_slot() -> None:
    gate = SlotGate(slots=1, bulk_share=0.1)
    waiters = Waiters(gate)
    assert gate.acquire(URGENT, waiters.stop)
    waiters.add(URGENT)
    waiters.add(BULK)
    waiters.settle()
    waiters.stop.set()
    for thread in waiters.threads:
        thread.join(timeout=2)
        assert not thread.is_alive()
    assert waiters.granted == []
