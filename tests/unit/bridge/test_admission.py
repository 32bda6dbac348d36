"""Jobs refused by Triton's full queue get places in the order they were refused, newcomers behind them."""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

from fluxfill.bridge.admission import AdmissionLine, AdmissionLines
from fluxfill.bridge.errors import JobCancelledError, TritonBusyError
from fluxfill.bridge.metrics import BridgeMetrics
from fluxfill.bridge.ports import InferenceRequest, InferenceResult, ProgressCallback, RunControl


@dataclass
class QueueOfPlaces:
    """Our InpaintModel port as Triton's bounded queue behaves: a request beyond `places` is refused at once;
    an admitted one runs until the test finishes it."""

    places: int
    name: str = "fake"
    protocol: str = "fake"
    admitted: list[int] = field(default_factory=list)  # seeds, in the order they got a place
    refusals: int = 0
    urgent_places: int = 0  # urgent requests admitted (and answered) at once, this many
    _running: list[threading.Event] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def is_ready(self) -> bool:
        return True

    def unready_reason(self) -> str:
        return ""

    def crop_geometry(self) -> None:
        return None

    def infer(
        self, request: InferenceRequest, *, on_progress: ProgressCallback, control: RunControl
    ) -> InferenceResult:
        finished = threading.Event()
        with self._lock:
            if request.urgent and self.urgent_places > 0:
                # Triton bounds each priority level's queue on its own.
                self.urgent_places -= 1
                self.admitted.append(request.seed)
                return InferenceResult(request.image, request.seed)
            if len(self._running) >= self.places:
                self.refusals += 1
                raise TritonBusyError("triton: Exceeds maximum queue size")
            self._running.append(finished)
            self.admitted.append(request.seed)
        finished.wait(30)
        return InferenceResult(request.image, request.seed)

    def finish_oldest(self) -> None:
        with self._lock:
            self._running.pop(0).set()

    def running(self) -> int:
        with self._lock:
            return len(self._running)


def request(seed: int, *, urgent: bool = False) -> InferenceRequest:
    return InferenceRequest(
        np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.uint8), "", seed, urgent=urgent
    )


def start(
    line: AdmissionLine | AdmissionLines,
    model: QueueOfPlaces,
    seed: int,
    control: RunControl | None = None,
    *,
    urgent: bool = False,
    errors: list[BaseException] | None = None,
) -> threading.Thread:
    """The job's inference on a thread of its own; the error it ends with goes into `errors` when given."""
    control = control or RunControl(deadline=time.monotonic() + 60)
    job = request(seed, urgent=urgent)
    chosen = line.line_for(job) if isinstance(line, AdmissionLines) else line

    def run() -> None:
        try:
            chosen.infer(model, job, lambda *_: None, control, BridgeMetrics())
        except (TritonBusyError, JobCancelledError) as error:
            if errors is None:
                raise
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_refused_jobs_get_places_in_the_order_they_were_refused_and_newcomers_wait_behind_them() -> None:
    """With a per-job doubling pause the newcomer (seed 9), refused last and polling fastest, took the first
    place that freed while the jobs refused long before it polled every 2 s."""
    model, line = QueueOfPlaces(places=1), AdmissionLine(admitted_after_s=0.1)
    threads = [start(line, model, 0)]
    wait_for(lambda: model.running() == 1)
    for seed in (1, 2, 3):
        threads.append(start(line, model, seed))
        wait_for(lambda seed=seed: len(line) == seed)  # refused, in line
    time.sleep(2.0)  # long enough for a per-job doubling pause to pass 1 s
    threads.append(start(line, model, 9))
    wait_for(lambda: len(line) == 4)
    for served in range(1, 5):
        model.finish_oldest()
        wait_for(lambda served=served: len(model.admitted) == served + 1)
    model.finish_oldest()
    for thread in threads:
        thread.join(10)
    assert model.admitted == [0, 1, 2, 3, 9]


def test_only_the_first_in_line_asks_again() -> None:
    """A line of jobs costs Triton one refused request per pause (at most 0.5 s), not one per job."""
    model, line = QueueOfPlaces(places=1), AdmissionLine()
    threads = [start(line, model, 0)]
    wait_for(lambda: model.running() == 1)
    threads += [start(line, model, seed) for seed in range(1, 9)]
    wait_for(lambda: len(line) == 8)
    refusals = model.refusals
    time.sleep(2.0)
    assert model.refusals - refusals <= 2.0 / 0.25 + 1
    model.finish_oldest()
    for _ in range(8):
        wait_for(lambda: model.running() == 1)
        model.finish_oldest()
    for thread in threads:
        thread.join(10)
    assert sorted(model.admitted) == list(range(9))


def test_a_job_still_behind_others_at_its_deadline_is_refused_and_leaves_the_line() -> None:
    model, line = QueueOfPlaces(places=1), AdmissionLine()
    first = start(line, model, 0)
    wait_for(lambda: model.running() == 1)
    start(line, model, 1)
    wait_for(lambda: len(line) == 1)
    outcome: list[BaseException] = []
    start(line, model, 2, RunControl(deadline=time.monotonic() + 1.0), errors=outcome).join(10)
    assert len(outcome) == 1
    assert isinstance(outcome[0], TritonBusyError)
    assert len(line) == 1, "the job that gave up is no longer in line"
    model.finish_oldest()
    wait_for(lambda: model.admitted == [0, 1])
    model.finish_oldest()
    first.join(10)


@pytest.mark.parametrize("where", ["in line", "first, pausing"])
def test_a_cancelled_job_leaves_the_line_at_once(where: str) -> None:
    model, line = QueueOfPlaces(places=1), AdmissionLine()
    start(line, model, 0)
    wait_for(lambda: model.running() == 1)
    if where == "in line":
        start(line, model, 1)
        wait_for(lambda: len(line) == 1)
    control = RunControl(deadline=time.monotonic() + 60)
    errors: list[BaseException] = []
    thread = start(line, model, 2, control, errors=errors)
    wait_for(lambda: len(line) == (2 if where == "in line" else 1))
    control.cancel.set()
    thread.join(2)
    assert len(errors) == 1
    assert isinstance(errors[0], JobCancelledError)
    assert len(line) == (1 if where == "in line" else 0)
    model.finish_oldest()


def test_an_urgent_job_does_not_wait_behind_refused_bulk_jobs() -> None:
    """Triton's queue is bounded per priority level: bulk jobs refused by theirs must not hold an urgent job
    back (one line for all made it wait behind every refused bulk job)."""
    model, lines = QueueOfPlaces(places=1, urgent_places=1), AdmissionLines()
    threads = [start(lines, model, seed) for seed in range(4)]
    wait_for(lambda: model.running() == 1 and len(lines.bulk) == 3)
    urgent = start(lines, model, 99, urgent=True)
    urgent.join(5)
    assert not urgent.is_alive()
    assert 99 in model.admitted
    assert len(lines.bulk) == 3
    for _ in range(4):
        wait_for(lambda: model.running() == 1)
        model.finish_oldest()
    for thread in threads:
        thread.join(10)
