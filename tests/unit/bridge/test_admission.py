"""Jobs refused by Triton's full queue get places in the order they were refused, newcomers behind them."""

import contextlib
import queue
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
from tests.unit.bridge.fakes import AlwaysReady


@dataclass
class QueueOfPlaces(AlwaysReady):
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


@dataclass
class Call:
    """One request the scripted queue holds until the test answers it."""

    seed: int
    answered: threading.Event = field(default_factory=threading.Event)
    refused: bool = False


@dataclass
class ScriptedQueue(AlwaysReady):
    """Our InpaintModel port as a Triton whose every answer the test gives: a request waits until the test
    refuses it (queue full) or admits it (it then runs until `finish`)."""

    name: str = "scripted"
    protocol: str = "fake"
    calls: "queue.Queue[Call]" = field(default_factory=queue.Queue)
    always_refused: set[int] = field(default_factory=set)  # seeds refused at once, without the test

    def infer(
        self, request: InferenceRequest, *, on_progress: ProgressCallback, control: RunControl
    ) -> InferenceResult:
        if request.seed in self.always_refused:
            raise TritonBusyError("triton: Exceeds maximum queue size")
        call = Call(request.seed)
        self.calls.put(call)
        call.answered.wait(30)
        if call.refused:
            raise TritonBusyError("triton: Exceeds maximum queue size")
        return InferenceResult(request.image, request.seed)

    def next_call(self, timeout_s: float = 5.0) -> Call:
        return self.calls.get(timeout=timeout_s)

    def refuse(self, call: Call) -> None:
        call.refused = True
        call.answered.set()

    def close(self) -> None:
        """Refuse every request, held or to come, so that cancelled jobs end at once."""
        self.always_refused |= set(range(100))
        while not self.calls.empty():
            self.refuse(self.calls.get())


def ended(jobs: list[threading.Thread], control: RunControl, model: ScriptedQueue) -> None:
    """Cancel the test's jobs and wait for them: none may raise in a later test."""
    control.cancel.set()
    model.close()
    for job in jobs:
        job.join(10)
        assert not job.is_alive()


def one_running_one_in_line(
    line: AdmissionLine, model: ScriptedQueue, control: RunControl, errors: list[BaseException]
) -> tuple[list[threading.Thread], Call]:
    """Job 0 admitted and running (its call, to answer at the end), job 1 refused and first in line."""
    jobs = [start(line, model, 0, control, errors=errors)]
    running = model.next_call()
    jobs.append(start(line, model, 1, control, errors=errors))
    model.refuse(model.next_call())
    wait_for(lambda: len(line) == 1)
    return jobs, running


def test_a_newcomer_does_not_even_ask_while_refused_jobs_wait() -> None:
    """Asking at once, it would take a place that freed before the first in line asked again."""
    model, line = ScriptedQueue(), AdmissionLine(admitted_after_s=60)
    control, errors = RunControl(deadline=time.monotonic() + 60), list[BaseException]()
    jobs, running = one_running_one_in_line(line, model, control, errors)
    jobs.append(start(line, model, 9, control, errors=errors))
    wait_for(lambda: len(line) == 2)
    asked = []
    deadline = time.monotonic() + 0.6  # the first in line asks again within 0.1 s, then every 0.2 s or so
    while time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            call = model.next_call(timeout_s=deadline - time.monotonic())
            asked.append(call.seed)
            model.refuse(call)
    assert asked, "the first in line asks again"
    assert set(asked) == {1}, f"asked by {asked}"
    running.answered.set()
    ended(jobs, control, model)


def test_jobs_let_through_and_refused_late_get_back_their_places_by_age() -> None:
    """A job is let through when no refusal came for a moment; a refusal may still come (a slow answer), and
    the next one's too. Each goes back to its own place: put at the front as it came back, the younger job,
    whose refusal came last, went before the older one; put at the end, both went behind a younger job."""
    model, line = ScriptedQueue(always_refused={3}), AdmissionLine(admitted_after_s=0.05)
    control, errors = RunControl(deadline=time.monotonic() + 60), list[BaseException]()
    jobs, running = one_running_one_in_line(line, model, control, errors)
    for seed in (2, 3):
        jobs.append(start(line, model, seed, control, errors=errors))
        wait_for(lambda seed=seed: len(line) == seed)
    older = model.next_call()  # 1 asks again, and is let through: no refusal for a moment
    younger = model.next_call()  # so 2 asks, and is let through too; 3 then asks, refused at once
    assert (older.seed, younger.seed) == (1, 2)
    wait_for(lambda: len(line) == 1)
    model.refuse(older)
    wait_for(lambda: len(line) == 2)
    model.refuse(younger)  # while 1 still pauses before it asks again
    wait_for(lambda: len(line) == 3)
    first = model.next_call()
    model.refuse(first)
    assert first.seed == 1, "the oldest job asks first"
    running.answered.set()
    ended(jobs, control, model)


def test_the_pause_between_a_first_in_lines_tries_stays_short() -> None:
    """Doubled without a cap, the first in line asked less and less often, and a freed place sat idle."""
    model, line = QueueOfPlaces(places=1), AdmissionLine(first_pause_s=0.01, max_pause_s=0.02)
    first = start(line, model, 0)
    wait_for(lambda: model.running() == 1)
    start(line, model, 1)
    wait_for(lambda: model.refusals > 0)
    refusals = model.refusals
    time.sleep(1.0)
    assert model.refusals - refusals >= 20, "about one try every 0.01 to 0.02 s"
    model.finish_oldest()
    wait_for(lambda: model.admitted == [0, 1])
    model.finish_oldest()
    first.join(10)


def test_the_next_in_line_asks_as_soon_as_the_first_got_a_place() -> None:
    """A request not refused for a moment is in Triton's queue: the next may ask for a place of its own then,
    not when the first one's whole run is over."""
    model, line = QueueOfPlaces(places=1), AdmissionLine(admitted_after_s=0.1)
    start(line, model, 0)
    wait_for(lambda: model.running() == 1)
    start(line, model, 1)
    wait_for(lambda: len(line) == 1)
    start(line, model, 2)
    wait_for(lambda: len(line) == 2)
    model.places = 3  # Triton has room for both now
    wait_for(lambda: model.running() == 3, timeout_s=5)
    assert model.admitted == [0, 1, 2]
    for _ in range(3):
        model.finish_oldest()


def test_every_refusal_is_counted() -> None:
    model, line, metrics = QueueOfPlaces(places=1), AdmissionLine(), BridgeMetrics()
    first = start(line, model, 0)
    wait_for(lambda: model.running() == 1)
    job = threading.Thread(
        target=line.infer,
        args=(model, request(1), lambda *_: None, RunControl(deadline=time.monotonic() + 60), metrics),
        daemon=True,
    )
    job.start()
    wait_for(lambda: model.refusals >= 3)
    model.finish_oldest()
    job.join(10)
    counted = metrics.registry.get_sample_value(
        "fluxfill_bridge_triton_errors_total", {"error": "TritonBusyError"}
    )
    assert counted == model.refusals
    model.finish_oldest()
    first.join(10)
