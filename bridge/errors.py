"""The bridge's exception tree; adapters translate third-party errors into it at one boundary each.

BridgeError
├── RetryableError            trying the same job again later may succeed: nack / HTTP 5xx
│   ├── TritonUnavailableError    server down, model not ready, internal error
│   ├── TritonBusyError           the model's queue is full: back-pressure, resent within the attempt
│   ├── TritonAnswerError         an answer the model's contract does not allow
│   ├── StorageTransientError     Cloud Storage 429 / 5xx / connection trouble
│   ├── SessionTransientError     Firestore unavailable, or a document that kept changing
│   └── ConfiguredValueRefusedError  the model refuses a value the runtime config gave the job
├── PermanentJobError         the job itself is wrong: ack + failed record with `code`
│   (invalid job, missing object, oversized object, bad image)
│   ├── ModelRefusedInputError    an input the model refuses (`tensor` names it)
│   └── SessionRefusedError       Firestore refuses the session's path (InvalidArgument)
└── RunStoppedError           the Triton run was stopped before it finished
    ├── JobCancelledError         the app asked to cancel, or the bridge is shutting down
    ├── JobDeadlineExceededError  the run's time limit passed: failed with `deadline_exceeded`
    └── LeaseLostError            our claim is no longer current: stop, write nothing

The handler alone decides what each means for the job; only the entry points ack or nack.
"""

from enum import StrEnum

from fluxfill.bridge.contract import ErrorCode


class RetryCause(StrEnum):
    """Why a delivery was given back (a RETRY outcome's `cause`, the jobs counter's `cause` label), so that a
    dashboard tells Triton away from an app's late writes, a Firestore outage or a bug."""

    MODEL_NOT_READY = "model_not_ready"  # Triton not ready: nothing was claimed
    TRITON = "triton"  # Triton failed, went away or answered wrongly during the run
    STORAGE = "storage"  # Cloud Storage failed in a way that may pass
    FIRESTORE = "firestore"  # Firestore failed in a way that may pass (a claim, a record, parking)
    PUBSUB = "pubsub"  # a topic did not take a message the bridge published (a parked job's)
    CONFIGURED_VALUE = "configured_value"  # the model refuses a value the runtime config gave the job
    SESSION_NOT_YET = "session_not_yet"  # no session document yet, within upload_grace_s of the publication
    RUNNING_ELSEWHERE = "running_elsewhere"  # the job runs under another live claim
    CLAIM_LOST = "claim_lost"  # our claim was taken over: nothing was written
    STOPPING = "stopping"  # this bridge is stopping (or Triton stopped the run): the job was given back
    INTERNAL_ERROR = "internal_error"  # a bug, logged with its traceback


class BridgeError(Exception):
    """Base of every error the bridge's ports raise; `retry_cause`: what a retry after it is counted as."""

    retry_cause = RetryCause.INTERNAL_ERROR


class RetryableError(BridgeError):
    """A transient failure: the message is redelivered and the job tried again."""


class TritonUnavailableError(RetryableError):
    """Triton cannot run the job now (unreachable, model not ready, internal error)."""

    retry_cause = RetryCause.TRITON


class TritonInterruptedError(RetryableError):
    """The run's deadline passed after Triton had been unavailable during it: the lost time was Triton's, so
    the job is tried again rather than failed as too slow (Triton may well be back: readiness is kept)."""

    retry_cause = RetryCause.TRITON


class TritonBusyError(RetryableError):
    """Triton refused the request because the model's queue is at its bound; the server itself is fine."""

    retry_cause = RetryCause.TRITON


class TritonAnswerError(RetryableError):
    """Triton answered what the model's contract does not allow (an image of another size than was sent)."""

    retry_cause = RetryCause.TRITON


class StorageTransientError(RetryableError):
    """Cloud Storage failed in a way that may pass."""

    retry_cause = RetryCause.STORAGE


class SessionTransientError(RetryableError):
    """Firestore failed in a way that may pass (including a change that lost every round to contention)."""

    retry_cause = RetryCause.FIRESTORE


class ConfiguredValueRefusedError(RetryableError):
    """The model refused a value the runtime config gave the job (its prompt, steps or guidance), not one the
    job sent: the service's to fix, not the app's. Tried again (the document may be mended meanwhile), then
    dead-lettered, so that `fluxfill dlq replay` runs it once it is."""

    retry_cause = RetryCause.CONFIGURED_VALUE


class AmbiguousObjectError(BridgeError):
    """More than one object matches a pattern ending in `*` (ObjectStore.find): which one is meant cannot be
    told. Each caller says what it means for its object (an original, a mask, a result)."""

    def __init__(self, pattern: str, paths: list[str]) -> None:
        super().__init__(f"more than one object matches {pattern}: {', '.join(paths)}")
        self.pattern = pattern
        self.paths = paths


class PermanentJobError(BridgeError):
    """The job cannot succeed however often it is tried; `code` goes into the session's error record."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class ModelRefusedInputError(PermanentJobError):
    """The model refused the request's input; `tensor` is the input its sentence names (None: none)."""

    def __init__(self, message: str, tensor: str | None) -> None:
        super().__init__(ErrorCode.MODEL_REJECTED_INPUT, message)
        self.tensor = tensor


class SessionRefusedError(PermanentJobError):
    """Firestore refuses the session document's path: no attempt can ever write it."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INVALID_JOB, message)


class RunStoppedError(BridgeError):
    """The Triton run stopped early."""


class JobCancelledError(RunStoppedError):
    """Cancelled: by the app through the session document, or by the bridge's shutdown."""

    retry_cause = RetryCause.STOPPING


class JobDeadlineExceededError(RunStoppedError):
    """The job's deadline passed before the result came back."""


class LeaseLostError(RunStoppedError):
    """The claim could not be renewed in time, or another claim replaced it: nothing may be written."""

    retry_cause = RetryCause.CLAIM_LOST
