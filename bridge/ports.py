"""The ports the job handler drives; adapters implement them over Cloud Storage, Firestore and Triton."""

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from fluxfill.bridge.context import CropGeometry
from fluxfill.bridge.contract import ErrorCode, JobStatus
from fluxfill.bridge.errors import RetryCause

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class ObjectInfo:
    """A stored object's metadata, read before any byte of it."""

    path: str
    size: int
    generation: int
    content_type: str | None = None
    # Content-Encoding (gzip): Cloud Storage then serves the object inflated, larger than `size` says.
    content_encoding: str | None = None
    # The RESULT_KEY_METADATA the bridge uploaded it with (None: not uploaded as a job's result).
    result_key: str | None = None


class ObjectStore(Protocol):
    """The bucket: metadata first, bounded reads, create-only writes."""

    def find(self, pattern: str) -> ObjectInfo | None:
        """The one object matching `pattern` (a path, or a prefix ending in `*`); None when absent.

        Raises AmbiguousObjectError when a `*` pattern matches several objects.
        """

    def read(self, info: ObjectInfo) -> bytes:
        """The bytes of exactly the generation `info` describes."""

    def create(self, path: str, data: bytes, content_type: str, result_key: str | None = None) -> bool:
        """Write a new object (carrying `result_key` as RESULT_KEY_METADATA); False (and nothing written)
        when one already exists."""


class ClaimKind(Enum):
    """What a claim attempt found."""

    CLAIMED = "claimed"  # ours now: run it
    FINISHED = "finished"  # already terminal: a duplicate delivery
    BUSY = "busy"  # a live lease is held (by another bridge, or by another run of this one)
    CANCEL_REQUESTED = "cancel_requested"  # the app cancelled before any bridge started it
    EXHAUSTED = "exhausted"  # max attempts were claimed already: dead-letter it, never run it again
    USER_AT_LIMIT = "user_at_limit"  # its user has max_jobs_in_flight_per_user jobs running: later
    TOO_LARGE = "too_large"  # the session document has no room for the bridge's fields: fail it, never run
    # No session document: the app deleted the session (or never made it). Run nothing, write nothing: a
    # session the app deleted stays deleted.
    NO_SESSION = "no_session"
    # The session document was made after this job's message could be for it: the job of a session the app
    # deleted, and the document another session's made under its id (sessions.remade). Nothing is written.
    REMADE = "remade"
    # The session document names another job (its `jobId`, the app's): the job of a session the app deleted
    # and made again under its id, or the app's earlier job for the session. Nothing is written.
    ANOTHER_JOB = "another_job"


@dataclass(frozen=True)
class Claim:
    """The outcome of a claim; `attempt` counts claims including this one.

    `claim_id` (CLAIMED) is the fencing token every later write of this run must carry;
    `holder_message_id` (BUSY) names the message the live claim runs; `last_error` (EXHAUSTED) says why
    the earlier attempts failed; `user_running` (USER_AT_LIMIT) how many of the user's jobs run;
    `document_bytes` (TOO_LARGE) the session document's size; `result_key` (CLAIMED) what the session's
    result objects carry (the first claim's id, kept by every later one; None for a session a bridge deployed
    before keys claimed first: its objects carry none); `session_made` (REMADE) when the document was made;
    `session_job_id` (ANOTHER_JOB) the job the document names. `claimed_before` (CANCEL_REQUESTED,
    EXHAUSTED): an earlier claim ran the job and no live one holds it, so that run's results may be uploaded,
    carrying `result_key` (as for CLAIMED).
    """

    kind: ClaimKind
    attempt: int = 0
    status: JobStatus | None = None
    claim_id: str = ""
    holder_message_id: str = ""
    last_error: str = ""
    user_running: int = 0
    document_bytes: int = 0
    result_key: str | None = None
    session_made: datetime | None = None
    session_job_id: str = ""
    claimed_before: bool = False


@dataclass(frozen=True)
class Heartbeat:
    """What a heartbeat learned: whether the app asked to cancel, whether the lease is still ours, whether
    the session document is gone (the app deleted it), and whether it renewed the lease (it renews it only
    when due, or with progress to record: fluxfill.bridge.sessions.heartbeat)."""

    cancel_requested: bool
    still_owner: bool
    session_gone: bool = False
    renewed: bool = False


@dataclass(frozen=True)
class JobRef:
    """A session document's path, the Pub/Sub message that carries the job, and its user (for fairness)."""

    document: str
    message_id: str
    user: str = ""


class SessionStore(Protocol):
    """The session documents; every write is fenced by the claim id and never leaves a terminal state."""

    def claim(
        self,
        job: JobRef,
        *,
        claim_id: str,
        owner: str,
        lease_s: float,
        max_attempts: int,
        max_per_user: int = 0,
        made_by: datetime | None = None,
        job_id: str | None = None,
    ) -> Claim:
        """Move the job to processing under `claim_id`, unless terminal, leased, cancelled or exhausted,
        or its user has `max_per_user` (0: no limit) jobs running already, or the document was made after
        `made_by` (sessions.remade; None: not checked) or names a job other than `job_id` (None: not
        checked); then nothing is written."""

    def heartbeat(
        self, job: JobRef, claim_id: str, lease_s: float, progress: tuple[int, int] | None
    ) -> Heartbeat:
        """Read the app's cancel request and whether the claim is still current; extend the lease when it is
        due, and with progress, which is then written too (None: none new)."""

    def holds_claim(self, job: JobRef, claim_id: str) -> bool:
        """Whether `claim_id` is still the job's current claim: one read, nothing written."""

    def release(self, job: JobRef, claim_id: str, reason: str, cause: RetryCause) -> None:
        """Give a claimed job back (status queued, its user's slot freed) so a redelivery can claim it."""

    def finish(self, job: JobRef, claim_id: str | None, status: JobStatus, fields: Mapping[str, Any]) -> bool:
        """Write a terminal status and free the claim's user slot; False when terminal, or `claim_id` is not
        current (None: unleased)."""


@dataclass(frozen=True)
class InferenceRequest:
    """One inpainting run: the normalised photo, or the part of it the model denoises
    (fluxfill.bridge.context), its mask, and the job's model parameters."""

    image: npt.NDArray[np.uint8]
    mask: npt.NDArray[np.uint8]
    prompt: str
    seed: int
    steps: int | None = None
    guidance: float | None = None
    urgent: bool = False


@dataclass(frozen=True)
class InferenceResult:
    """The inpainted image (the request's image's size) and the seed used."""

    image: npt.NDArray[np.uint8]
    seed: int


@dataclass
class RunControl:
    """How a running inference is stopped: `cancel` set from any thread, or the monotonic `deadline`."""

    deadline: float
    cancel: threading.Event = field(default_factory=threading.Event)


class InpaintModel(Protocol):
    """Triton serving FLUX.1-Fill."""

    name: str
    protocol: str

    def is_ready(self) -> bool:
        """Whether the model answers READY now; never raises."""

    def unready_reason(self) -> str:
        """Why the last `is_ready` said no, in a sentence (empty when it said yes)."""

    def crop_geometry(self) -> CropGeometry | None:
        """The parameters the model crops each request by (fluxfill.bridge.context); None when they cannot be
        known (then whole photos are sent). Never raises."""

    def infer(
        self, request: InferenceRequest, *, on_progress: ProgressCallback, control: RunControl
    ) -> InferenceResult:
        """Run to the end; raises TritonUnavailableError, PermanentJobError, JobCancelledError or
        JobDeadlineExceededError."""


class DeadLetterSink(Protocol):
    """Where the bridge sends messages that Pub/Sub's own dead-lettering cannot handle."""

    def publish(self, data: bytes, attributes: Mapping[str, str], code: ErrorCode, reason: str) -> None:
        """Publish and wait for the server's acknowledgement; raises RetryableError on failure."""


class DeadLetterLedger(Protocol):
    """Which original messages were dead-lettered already."""

    def recorded(self, message_id: str) -> bool:
        """Whether `message_id` was dead-lettered; raises RetryableError when that cannot be read."""

    def record(self, message_id: str, code: ErrorCode) -> None:
        """Note that `message_id` was dead-lettered with `code`; raises RetryableError on failure."""


class Requeue(Protocol):
    """Where a job is published again (a parked one released, one carried over): its lane's topic."""

    def publish(self, data: bytes, attributes: Mapping[str, str], lane: str) -> None:
        """Publish and wait for the server's acknowledgement; raises RetryableError on failure."""


@dataclass(frozen=True)
class ParkedJob:
    """A job waiting for a slot of its user's: its message as it will be published again.

    `version` is the store's own (Firestore's update time): a release wins only the version it read.
    """

    user: str
    session: str
    data: bytes
    attributes: Mapping[str, str]
    lane: str
    first_published: datetime | None
    version: Any = None


class ParkingLot(Protocol):
    """Jobs over their user's limit, kept outside Pub/Sub until a slot frees (fluxfill.bridge.parking)."""

    def park(self, job: ParkedJob) -> bool:
        """Keep the job in place of one of the same session that it supersedes (parking.supersedes); False,
        nothing written, when it does not; raises RetryableError on failure."""

    def oldest(self, user: str, count: int) -> list[ParkedJob]:
        """Up to `count` of the user's parked jobs, first published first, none being released by another
        bridge now; raises RetryableError."""

    def release(self, job: ParkedJob) -> bool:
        """Publish the job and forget it, if `job.version` is still the parked one (False: another bridge
        released it, or it was parked anew); raises RetryableError."""

    def users(self) -> list[str]:
        """The users with parked jobs; raises RetryableError."""


class SlotCounter(Protocol):
    """How many of a user's jobs run now (fluxfill.bridge.user_slots)."""

    def running(self, user: str) -> int:
        """The user's live slots; raises RetryableError."""


class QueuedCancels(Protocol):
    """The session documents of queued jobs their app cancelled (fluxfill.bridge.cancel_sweep)."""

    def cancelled_queued(self, limit: int) -> list[str]:
        """Paths of at most `limit` session documents `queued` with `cancelRequested`; raises BridgeError."""

    def end_cancelled(self, path: str) -> bool:
        """End the session `cancelled` (fluxfill.bridge.sessions.cancel_unclaimed); False when that rule
        writes nothing now (claimed, ended, or claimed before); raises BridgeError."""
