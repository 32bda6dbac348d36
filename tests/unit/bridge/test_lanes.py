"""The slot gate: urgent work first, a reserved share for bulk, a stop that frees every waiter."""

import json
import threading
import time

from fluxfill.bridge.lanes import SlotGate, lane_of
from fluxfill.bridge.metrics import BridgeMetrics

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

        thread = threading.Thread(target=wait, daemon=True)  # a failed test must not hang the run
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


def test_a_granted_waiter_leaves_the_count_so_bulk_work_runs_once_no_urgent_work_waits() -> None:
    metrics = BridgeMetrics()
    gate = SlotGate(slots=1, bulk_share=0.1, waiting=metrics.waiting)
    waiters = Waiters(gate)
    assert gate.acquire(BULK, waiters.stop)
    waiters.add(URGENT)
    waiters.settle()
    gate.release()
    waiters.wait_granted(1)  # the urgent job runs
    waiters.add(BULK)
    waiters.settle()
    gate.release()  # and ends: no urgent job waits now
    waiters.wait_granted(2)
    assert waiters.granted == [URGENT, BULK]
    for lane in (URGENT, BULK):
        assert metrics.registry.get_sample_value("fluxfill_bridge_jobs_waiting", {"lane": lane}) == 0
    waiters.stop.set()


def test_a_wait_for_a_slot_gives_up_after_its_timeout() -> None:
    """Push mode waits `push_slot_wait_s` for a slot, then answers 429: Pub/Sub then tries another bridge."""
    gate = SlotGate(slots=1, bulk_share=0.1)
    stop = threading.Event()
    assert gate.acquire(URGENT, stop)
    answers: list[bool] = []
    started = time.monotonic()
    waiter = threading.Thread(
        target=lambda: answers.append(gate.acquire(BULK, stop, timeout_s=0.3)), daemon=True
    )
    waiter.start()
    waiter.join(timeout=5)
    stop.set()
    assert answers == [False]
    assert 0.3 <= time.monotonic() - started < 5
    gate.release()
    assert gate.acquire(BULK, threading.Event(), timeout_s=0.3)


def test_a_message_that_is_no_job_waits_in_the_bulk_lane() -> None:
    job = {"userId": "user1", "sessionId": "session1"}
    assert lane_of(json.dumps({**job, "priority": URGENT}).encode()) == URGENT
    assert lane_of(json.dumps(job).encode()) == BULK
    for refused in (b"not json", json.dumps({**job, "priority": "soon"}).encode()):
        assert lane_of(refused) == BULK
