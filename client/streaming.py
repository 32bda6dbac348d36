"""One streamed gRPC call (flux_fill_stream) that reports progress and can be stopped.

It waits on a queue fed by tritonclient's callback thread, polling briefly, so the calling thread
notices a cancel handle, its deadline and Ctrl-C within `POLL_S`; leaving the wait for any reason but a
result cancels the gRPC call, which stops the run on the server within one step.
"""

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from tritonclient.utils import InferenceServerException

from fluxfill.client.errors import CancelledError, DeadlineExceededError, map_triton_error

ProgressCallback = Callable[[int, int], None]
POLL_S = 0.05


class CancelHandle:
    """Pass to `inpaint(cancel=...)`; `cancel()` from any thread stops the run on the server."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the running call to stop; it raises CancelledError within a moment."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """Whether cancel() was called."""
        return self._event.is_set()

    def wait(self, seconds: float) -> None:
        """Sleep for `seconds`, or until cancel() is called."""
        self._event.wait(seconds)


@dataclass(frozen=True)
class InpaintOutput:
    """The inpainted image (input height x width x 3) and the seed the server used."""

    image: npt.NDArray[np.uint8]
    seed: int


_Reply = tuple[Any, InferenceServerException | None]


class _Waiter:
    """Collects replies from tritonclient's thread and checks cancel and deadline while waiting."""

    def __init__(self, cancel: CancelHandle | None, timeout_s: float | None) -> None:
        self.replies: queue.Queue[_Reply] = queue.Queue()
        self._cancel = cancel
        self._timeout_s = timeout_s
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def callback(self, result: Any, error: InferenceServerException | None) -> None:
        self.replies.put((result, error))

    def next(self) -> Any:
        """The next result; raises the mapped server error, CancelledError or DeadlineExceededError."""
        while True:
            if self._cancel is not None and self._cancel.cancelled:
                raise CancelledError("cancelled by the caller")
            if self._deadline is not None and time.monotonic() > self._deadline:
                raise DeadlineExceededError(f"deadline exceeded: no result within {self._timeout_s:.3g} s")
            try:
                result, error = self.replies.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if error is not None:
                raise map_triton_error(error)
            return result


def _output(result: Any) -> InpaintOutput:
    return InpaintOutput(result.as_numpy("IMAGE"), int(result.as_numpy("SEED")[0]))


def stream_call(
    client: Any,
    model: str,
    inputs: list[Any],
    *,
    on_progress: ProgressCallback | None,
    cancel: CancelHandle | None,
    timeout_s: float | None,
) -> InpaintOutput:
    """Run a decoupled model over a gRPC stream: progress per step, the image from the final response."""
    waiter = _Waiter(cancel, timeout_s)
    client.start_stream(callback=waiter.callback)
    finished = False
    reported = 0
    try:
        client.async_stream_infer(model, inputs)
        while True:
            result = waiter.next()
            step, total = result.as_numpy("STEP"), result.as_numpy("TOTAL_STEPS")
            # The final response repeats the last step: report each step once.
            if on_progress is not None and step is not None and total is not None and int(step[0]) > reported:
                reported = int(step[0])
                on_progress(reported, int(total[0]))
            if result.as_numpy("IMAGE") is not None:
                finished = True
                return _output(result)
    finally:
        # An error, a cancel, a deadline or Ctrl-C: cancel the stream, which stops the run on the server.
        client.stop_stream(cancel_requests=not finished)
