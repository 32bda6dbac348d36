"""Waiting for readiness: woken by the change itself, and by a stop, however long the poll interval."""

import threading
import time

from fluxfill.bridge.metrics import BridgeMetrics
from fluxfill.bridge.readiness import Readiness

LONG_INTERVAL_S = 600.0


class Model:
    """Our InpaintModel port's readiness half."""

    name, protocol = "flux_fill_stream", "grpc-stream"

    def __init__(self) -> None:
        self.ready = False

    def is_ready(self) -> bool:
        return self.ready


def _wait_in_thread(readiness: Readiness, stop: threading.Event) -> tuple[threading.Thread, list[bool]]:
    answers: list[bool] = []
    waiter = threading.Thread(target=lambda: answers.append(readiness.wait_until_ready(stop)), daemon=True)
    waiter.start()
    return waiter, answers


def test_a_stop_ends_the_wait_without_waiting_out_the_interval() -> None:
    # Seen on a busy machine: a bridge asked to stop while Triton was away did not stop within 60 s.
    readiness = Readiness(Model(), LONG_INTERVAL_S, BridgeMetrics())
    stop = threading.Event()
    waiter, answers = _wait_in_thread(readiness, stop)
    time.sleep(0.1)
    stop.set()
    waiter.join(timeout=5)
    assert not waiter.is_alive()
    assert answers == [False]


def test_readiness_wakes_every_waiter_at_once_however_often_it_flips() -> None:
    # Many waiters racing many changes: none may sleep through the change it waits for (a missed notify
    # would keep it asleep for the whole interval).
    model = Model()
    readiness = Readiness(model, LONG_INTERVAL_S, BridgeMetrics())
    stop = threading.Event()
    for _ in range(200):
        model.ready = False
        readiness.check()
        waiters = [_wait_in_thread(readiness, stop) for _ in range(4)]
        model.ready = True
        readiness.check()
        for waiter, answers in waiters:
            waiter.join(timeout=5)
            assert not waiter.is_alive(), "a waiter slept through the change"
            assert answers == [True]
    stop.set()
