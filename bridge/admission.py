"""Triton's full queue is back-pressure, not a failure: a refused request is sent again within the attempt,
the bridge's refused jobs oldest first.

A pause that doubled per job (the way before) let the jobs refused a moment ago, polling every 0.1 s, take
the places a long-waiting job, polling every 2 s, was waiting for: under a burst one job could be refused
until its deadline while younger ones ran. Now the refused jobs form a line: only the first sends again,
with a short flat pause, and a job that finds a line waits behind it instead of trying first.
"""

import bisect
import itertools
import random
import threading
import time

from fluxfill.bridge.errors import BridgeError, JobCancelledError, TritonBusyError
from fluxfill.bridge.metrics import BridgeMetrics
from fluxfill.bridge.ports import (
    InferenceRequest,
    InferenceResult,
    InpaintModel,
    ProgressCallback,
    RunControl,
)

# The first in line sends again after this pause, doubled up to the cap, jittered so that the lines of the
# bridges sharing a server do not knock in step. The cap stays short: one request per bridge at most polls.
BUSY_FIRST_PAUSE_S = 0.1
BUSY_MAX_PAUSE_S = 0.5
# Triton refuses a request over its queue at once; one not refused this long after it went is in the queue
# (or running), and the next in line may try.
ADMITTED_AFTER_S = 0.25
_WAIT_STEP_S = 0.05


class AdmissionLine:
    """One bridge's jobs waiting for a place in Triton's queue, oldest first."""

    def __init__(
        self,
        admitted_after_s: float = ADMITTED_AFTER_S,
        first_pause_s: float = BUSY_FIRST_PAUSE_S,
        max_pause_s: float = BUSY_MAX_PAUSE_S,
    ) -> None:
        self._admitted_after_s = admitted_after_s
        self._first_pause_s = first_pause_s
        self._max_pause_s = max_pause_s
        # Tickets are numbered as jobs arrive and the line is kept in their order: a job refused again after
        # it was let through (Triton's refusal came late) goes back to its own place, whatever the order in
        # which the refusals of the jobs let through came back.
        self._numbers = itertools.count()
        self._line: list[int] = []
        self._changed = threading.Condition()

    def __len__(self) -> int:
        with self._changed:
            return len(self._line)

    def infer(
        self,
        model: InpaintModel,
        request: InferenceRequest,
        on_progress: ProgressCallback,
        control: RunControl,
        metrics: BridgeMetrics,
    ) -> InferenceResult:
        """Run on Triton; while its queue is full, wait in line and send again when first; every failed call
        is counted by error. Only when the job's deadline would pass first does the refusal (TritonBusyError)
        end the attempt."""
        with self._changed:
            ticket = next(self._numbers)
            if self._line:  # others were refused before us: behind them
                self._line.append(ticket)
        pause = self._first_pause_s
        try:
            while True:
                in_line = self._wait_to_be_first(ticket, control)
                # The next in line may go once this request has not been refused for a moment (a job that
                # is in no line holds nobody back: no timer).
                admitted = threading.Timer(self._admitted_after_s, self._let_go, (ticket,))
                admitted.daemon = True
                if in_line:
                    admitted.start()
                try:
                    return model.infer(request, on_progress=on_progress, control=control)
                except BridgeError as error:
                    metrics.triton_errors.labels(type(error).__name__).inc()
                    if not isinstance(error, TritonBusyError):
                        raise
                    refused = error
                finally:
                    admitted.cancel()
                self._keep_place(ticket)
                wait = pause * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not cryptography)
                if time.monotonic() + wait >= control.deadline:
                    raise refused
                if control.cancel.wait(wait):
                    raise JobCancelledError("cancelled while Triton's queue was full") from None
                pause = min(2 * pause, self._max_pause_s)
        finally:
            self._let_go(ticket)

    def _keep_place(self, ticket: int) -> None:
        """Refused: back in line at its place by age (first again when it was first, or let through a moment
        ago: it is older than all that came after it)."""
        with self._changed:
            if ticket not in self._line:
                bisect.insort(self._line, ticket)

    def _wait_to_be_first(self, ticket: int, control: RunControl) -> bool:
        """Return when the job may send: first in line (True), or in no line (False); raise on cancel, or
        when the deadline passes still behind others."""
        with self._changed:
            while ticket in self._line and self._line[0] is not ticket:
                if control.cancel.is_set():
                    raise JobCancelledError("cancelled while waiting for a place in Triton's queue")
                if time.monotonic() >= control.deadline:
                    raise TritonBusyError(
                        f"Triton's queue stayed full: {self._line.index(ticket)} jobs of this bridge were "
                        "still ahead at the deadline"
                    )
                self._changed.wait(_WAIT_STEP_S)
            return ticket in self._line

    def _let_go(self, ticket: int) -> None:
        """Out of the line (the next may send): let through, not refused for a moment (so in Triton's queue),
        or leaving it."""
        with self._changed:
            if ticket in self._line:
                self._line.remove(ticket)
                self._changed.notify_all()


class AdmissionLines:
    """A line per Triton priority level: the model's queue policy bounds each level's queue on its own, so an
    urgent job never waits behind bulk jobs that the bulk queue refused."""

    def __init__(self, admitted_after_s: float = ADMITTED_AFTER_S) -> None:
        self.urgent = AdmissionLine(admitted_after_s)
        self.bulk = AdmissionLine(admitted_after_s)

    def line_for(self, request: InferenceRequest) -> AdmissionLine:
        """The line of the request's priority."""
        return self.urgent if request.urgent else self.bulk
