"""Triton's full queue is back-pressure, not a failure: a refused request is sent again within the attempt."""

import random
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

# The pause doubles from the first to the cap, with jitter, so bridges sharing a server do not knock in step.
BUSY_FIRST_PAUSE_S = 0.1
BUSY_MAX_PAUSE_S = 2.0


def infer_when_admitted(
    model: InpaintModel,
    request: InferenceRequest,
    on_progress: ProgressCallback,
    control: RunControl,
    metrics: BridgeMetrics,
) -> InferenceResult:
    """Run on Triton, resending while its queue is full; every failed call is counted by error.

    Only when the job's deadline would pass first does the refusal (TritonBusyError) end the attempt.
    """
    pause = BUSY_FIRST_PAUSE_S
    while True:
        try:
            return model.infer(request, on_progress=on_progress, control=control)
        except BridgeError as error:
            metrics.triton_errors.labels(type(error).__name__).inc()
            if not isinstance(error, TritonBusyError):
                raise
            wait = pause * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not cryptography)
            if time.monotonic() + wait >= control.deadline:
                raise
            if control.cancel.wait(wait):
                raise JobCancelledError("cancelled while Triton's queue was full") from None
            pause = min(2 * pause, BUSY_MAX_PAUSE_S)
