"""Waiting for readiness: woken by the change itself, and by a stop, however long the poll interval."""

import threading
import time

import structlog.testing

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

    def unready_reason(self) -> str:
        return "" if self.ready else "the fake is set not ready"


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


def test_a_wait_with_a_timeout_ends_then_unready_or_at_the_change_ready() -> None:
    model = Model()
    readiness = Readiness(model, LONG_INTERVAL_S, BridgeMetrics())
    stop = threading.Event()
    started = time.monotonic()
    assert readiness.wait_until_ready(stop, timeout_s=0.3) is False
    assert 0.3 <= time.monotonic() - started < 5
    threading.Timer(0.2, lambda: (setattr(model, "ready", True), readiness.check())).start()
    assert readiness.wait_until_ready(stop, timeout_s=30) is True


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


def test_a_model_never_ready_is_told_with_its_reason_at_once_and_again_each_minute() -> None:
    """A bridge aimed at a wrong Triton URL said "bridge started", then nothing, for good."""
    now = [1000.0]
    model = Model()
    readiness = Readiness(model, 0.01, BridgeMetrics(), clock=lambda: now[0])
    stop = threading.Event()

    def poll_once() -> None:
        stop.clear()
        poller = threading.Thread(target=readiness.poll, args=(stop,))
        poller.start()
        time.sleep(0.05)
        stop.set()
        poller.join(timeout=5)

    with structlog.testing.capture_logs() as logs:
        poll_once()
        now[0] += 59.0
        poll_once()
        now[0] += 2.0
        poll_once()
        model.ready = True
        poll_once()
        now[0] += 600.0
        poll_once()
    told = [(log["log_level"], log["event"], log.get("for_s")) for log in logs]
    assert told == [
        ("warning", "readiness changed", None),
        ("warning", "still taking no work: the model is not ready", 61),
        ("info", "readiness changed", None),
    ]
    assert logs[0]["reason"] == "model flux_fill_stream not ready: the fake is set not ready"
    assert logs[1]["reason"] == logs[0]["reason"]


def test_a_failed_call_makes_the_bridge_unready_and_a_run_learns_of_it_after_triton_is_back() -> None:
    """A run asks at its end whether Triton went away while it ran (its failure is then Triton's, and the
    job is given back): a blip between two checks must still be told."""
    model, metrics = Model(), BridgeMetrics()
    model.ready = True
    readiness = Readiness(model, LONG_INTERVAL_S, metrics)
    assert readiness.check()
    mark = readiness.mark()
    assert readiness.unavailable_since(mark) is None
    readiness.mark_unready("triton: connection refused")
    assert not readiness.ready
    assert metrics.registry.get_sample_value("fluxfill_bridge_ready") == 0
    assert readiness.check(), "a check that finds the model READY again"
    assert metrics.registry.get_sample_value("fluxfill_bridge_ready") == 1
    assert readiness.unavailable_since(mark) == "triton: connection refused"
    assert readiness.unavailable_since(readiness.mark()) is None


def test_a_stopping_bridge_takes_no_work_though_the_model_is_ready() -> None:
    model = Model()
    model.ready = True
    readiness = Readiness(model, LONG_INTERVAL_S, BridgeMetrics())
    assert readiness.check()
    readiness.stopping.set()
    assert not readiness.ready
    assert readiness.wait_until_ready(threading.Event(), timeout_s=0.2) is False
