"""Hand-written in-memory fakes of the bridge's own ports."""

import contextlib
import fnmatch
import io
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
from PIL import Image

from fluxfill.bridge import sessions, user_slots
from fluxfill.bridge.context import CropGeometry
from fluxfill.bridge.contract import ErrorCode, SessionField
from fluxfill.bridge.errors import (
    AmbiguousObjectError,
    JobCancelledError,
    JobDeadlineExceededError,
    RetryableError,
    RetryCause,
    SessionRefusedError,
    SessionTransientError,
    TritonBusyError,
)
from fluxfill.bridge.parking import supersedes
from fluxfill.bridge.ports import (
    Claim,
    Heartbeat,
    InferenceRequest,
    InferenceResult,
    JobRef,
    ObjectInfo,
    ParkedJob,
    ProgressCallback,
    RunControl,
)
from tests.support import make_config


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class FakeObjectStore:
    """A bucket in a dict; records every read so tests can see what was downloaded."""

    objects: dict[str, bytes] = field(default_factory=dict)
    reads: list[str] = field(default_factory=list)
    fail_with: Exception | None = None
    read_delay_s: float = 0.0  # a slow bucket
    content_types: dict[str, str] = field(default_factory=dict)
    result_keys: dict[str, str] = field(default_factory=dict)  # what create() was given
    finds: list[str] = field(default_factory=list)  # every pattern looked for, in order

    def find(self, pattern: str) -> ObjectInfo | None:
        self.finds.append(pattern)
        if self.fail_with is not None:
            raise self.fail_with
        # As Cloud Storage lists a prefix: the final `*` stands for the rest of a name, never for a folder.
        matches = sorted(
            p for p in self.objects if fnmatch.fnmatchcase(p, pattern) and p.count("/") == pattern.count("/")
        )
        if len(matches) > 1:
            raise AmbiguousObjectError(pattern, matches)
        if not matches:
            return None
        path = matches[0]
        return ObjectInfo(path, len(self.objects[path]), 1, result_key=self.result_keys.get(path))

    def read(self, info: ObjectInfo) -> bytes:
        time.sleep(self.read_delay_s)
        self.reads.append(info.path)
        return self.objects[info.path]

    def create(self, path: str, data: bytes, content_type: str, result_key: str | None = None) -> bool:
        if path in self.objects:
            return False
        self.objects[path] = data
        self.content_types[path] = content_type
        if result_key is not None:
            self.result_keys[path] = result_key
        return True


@dataclass
class FakeSessionStore:
    """Session documents in a dict, under the same state machine as the Firestore adapter."""

    documents: dict[str, dict[str, Any]] = field(default_factory=dict)
    progress_writes: list[tuple[int, int]] = field(default_factory=list)
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    heartbeat_fails_with: Exception | None = None  # every heartbeat raises this (Firestore away)
    heartbeat_hangs: threading.Event = field(default_factory=threading.Event)  # set: heartbeats block
    finish_fails_with: Exception | None = None
    user_slots: dict[str, dict[str, Any]] = field(default_factory=dict)  # per user, as in Firestore
    made: dict[str, datetime] = field(default_factory=dict)  # a document's create time, where a test sets one
    claims: int = 0  # claim transactions asked for
    heartbeats: int = 0  # heartbeats answered
    heartbeat_writes: int = 0  # of which wrote the session document (renewed the lease, recorded progress)
    claim_checks: int = 0  # reads of whether a claim is still current
    call_s: float = 0.0  # each heartbeat and finish takes this long, as a round trip to Firestore does
    most_at_once: int = 0  # the most heartbeats and finishes of one session in flight together
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _in_flight: Counter[str] = field(default_factory=Counter)

    @contextlib.contextmanager
    def _round_trip(self, path: str) -> Iterator[None]:
        with self._lock:
            self._in_flight[path] += 1
            self.most_at_once = max(self.most_at_once, self._in_flight[path])
        try:
            time.sleep(self.call_s)
            yield
        finally:
            with self._lock:
                self._in_flight[path] -= 1

    def _heartbeat_faults(self) -> None:
        """The injected faults of the calls made while a job runs: an error, or a frozen Firestore (no answer,
        no error) while `heartbeat_hangs` is set."""
        if self.heartbeat_fails_with is not None:
            raise self.heartbeat_fails_with
        while self.heartbeat_hangs.is_set():
            time.sleep(0.01)

    def _apply(self, path: str, update: Mapping[str, Any] | None) -> None:
        if update is None:
            return
        fields = {str(k): v for k, v in update.items()}
        # Firestore refuses a write that takes the document past its size limit, counting the name too.
        size = sessions.name_bytes(path) + sessions.document_bytes({**self.documents.get(path, {}), **fields})
        if size > sessions.MAX_DOCUMENT_BYTES:
            raise SessionRefusedError(
                f"firestore refused the write: Document {path} cannot be written because its size "
                f"({size:,} bytes) exceeds the maximum allowed size of 1,048,576 bytes"
            )
        self.documents.setdefault(path, {}).update(fields)

    def _apply_slots(self, job: JobRef, update: dict[str, Any] | None) -> None:
        if update is not None and job.user:
            self.user_slots[job.user] = update

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
        with self._lock:
            self.claims += 1
            path = job.document
            if path in self.documents and (remade := sessions.remade(self.made.get(path), made_by)):
                return remade
            result, update, slots = user_slots.claim(
                self.documents.get(job.document),
                self.user_slots.get(job.user),
                limit=max_per_user,
                claim_id=claim_id,
                owner=owner,
                now=self.now(),
                lease_s=lease_s,
                message_id=job.message_id,
                max_attempts=max_attempts,
                job_id=job_id,
            )
            self._apply(job.document, update)
            self._apply_slots(job, slots)
            return result

    def heartbeat(
        self, job: JobRef, claim_id: str, lease_s: float, progress: tuple[int, int] | None
    ) -> Heartbeat:
        self._heartbeat_faults()
        with self._round_trip(job.document), self._lock:
            beat, update, slots = user_slots.heartbeat(
                self.documents.get(job.document),
                self.user_slots.get(job.user),
                claim_id=claim_id,
                now=self.now(),
                lease_s=lease_s,
                progress=progress,
                path=job.document,
            )
            self._apply(job.document, update)
            self.heartbeats += 1
            self.heartbeat_writes += update is not None
            if update is not None and SessionField.PROGRESS in update:
                self.progress_writes.append(progress)  # type: ignore[arg-type]
            self._apply_slots(job, slots)
            return beat

    def holds_claim(self, job: JobRef, claim_id: str) -> bool:
        self._heartbeat_faults()  # Firestore away or frozen: the claim's read fails or hangs as heartbeats do
        with self._round_trip(job.document), self._lock:
            self.claim_checks += 1
            return sessions.held_by(self.documents.get(job.document), claim_id)

    def release(self, job: JobRef, claim_id: str, reason: str, cause: RetryCause) -> None:
        with self._lock:
            now = self.now()
            update = sessions.release(
                self.documents.get(job.document), claim_id, now, reason, cause, path=job.document
            )
            self._apply(job.document, update)
            self._apply_slots(job, user_slots.drop(self.user_slots.get(job.user), claim_id, now))

    def running(self, user: str) -> int:
        """Our SlotCounter port: the user's live slots."""
        with self._lock:
            return len(user_slots.live_claims(self.user_slots.get(user), self.now()))

    def finish(self, job: JobRef, claim_id: str | None, status: Any, fields: Mapping[str, Any]) -> bool:
        if self.finish_fails_with is not None:
            raise self.finish_fails_with
        with self._round_trip(job.document), self._lock:
            now = self.now()
            update = sessions.finish(
                self.documents.get(job.document), claim_id, now, status, fields, path=job.document
            )
            try:
                self._apply(job.document, update)
            finally:  # refused too: the job has ended here either way, as the Firestore adapter frees it
                self._apply_slots(job, user_slots.drop(self.user_slots.get(job.user), claim_id, now))
            return update is not None


class AlwaysReady:
    """The readiness half of our InpaintModel port for fakes that are always READY and crop nothing."""

    def is_ready(self) -> bool:
        return True

    def unready_reason(self) -> str:
        return ""

    def crop_geometry(self) -> None:
        return None


@dataclass
class FakeModel:
    """Paints the mask white step by step; can be slowed, made to fail or busy, or held until cancelled."""

    steps: int = 4
    step_s: float = 0.0
    queued_s: float = 0.0  # waited before the first step, as a run behind others in Triton's queue
    fail_with: Exception | None = None
    busy_calls: int = 0  # this many calls are refused first, as Triton's full queue refuses them
    ready: bool = True
    calls: list[InferenceRequest] = field(default_factory=list)
    name: str = "fake_flux_fill"
    protocol: str = "fake"
    # What it crops by: the shipped model's parameters (None: whole photos are sent).
    geometry: CropGeometry | None = field(default_factory=lambda: make_config().crop_geometry)

    def is_ready(self) -> bool:
        return self.ready

    def unready_reason(self) -> str:
        return "" if self.ready else "the fake is set not ready"

    def crop_geometry(self) -> CropGeometry | None:
        return self.geometry

    def infer(
        self, request: InferenceRequest, *, on_progress: ProgressCallback, control: RunControl
    ) -> InferenceResult:
        self.calls.append(request)
        if len(self.calls) <= self.busy_calls:
            raise TritonBusyError("triton: Exceeds maximum queue size")
        if self.fail_with is not None:
            raise self.fail_with
        total = request.steps or self.steps
        if control.cancel.wait(self.queued_s):
            raise JobCancelledError("cancelled in the queue")
        for step in range(1, total + 1):
            if control.cancel.wait(self.step_s) or control.cancel.is_set():
                raise JobCancelledError(f"cancelled after step {step - 1}")
            if time.monotonic() > control.deadline:
                raise JobDeadlineExceededError("deadline exceeded")
            on_progress(step, total)
        image = request.image.copy()
        image[request.mask >= 128] = 255
        return InferenceResult(image, request.seed)


@dataclass
class FakeDeadLetters:
    """Our DeadLetterSink port: records what it was given, or fails."""

    broken: bool = False
    published: list[tuple[bytes, dict[str, str], ErrorCode]] = field(default_factory=list)

    def publish(self, data: bytes, attributes: Mapping[str, str], code: ErrorCode, reason: str) -> None:
        if self.broken:
            raise RetryableError("dead-letter topic unavailable")
        self.published.append((data, dict(attributes), code))


@dataclass
class FakeRequeue:
    """Our Requeue port: records what it was given (data, attributes, lane), or fails."""

    broken: bool = False
    published: list[tuple[bytes, dict[str, str], str]] = field(default_factory=list)

    def publish(self, data: bytes, attributes: Mapping[str, str], lane: str) -> None:
        if self.broken:
            raise RetryableError("jobs topic unavailable")
        self.published.append((data, dict(attributes), lane))


@dataclass
class FakeParkingLot:
    """Our ParkingLot port in a dict (each park a new version, as Firestore's update time); records what it
    published; can be made to fail."""

    parked: dict[tuple[str, str], ParkedJob] = field(default_factory=dict)
    published: list[ParkedJob] = field(default_factory=list)
    broken: bool = False
    _versions: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _check(self) -> None:
        if self.broken:
            raise SessionTransientError("firestore unavailable")

    def park(self, job: ParkedJob) -> bool:
        self._check()
        with self._lock:
            there = self.parked.get((job.user, job.session))
            if there is not None and not supersedes(job.first_published, there.first_published):
                return False
            self._versions += 1
            self.parked[(job.user, job.session)] = replace(job, version=self._versions)
            return True

    def oldest(self, user: str, count: int) -> list[ParkedJob]:
        self._check()
        with self._lock:
            mine = [job for (owner, _), job in self.parked.items() if owner == user]
        return sorted(mine, key=lambda job: job.first_published or datetime.min.replace(tzinfo=UTC))[:count]

    def release(self, job: ParkedJob) -> bool:
        self._check()
        with self._lock:
            current = self.parked.get((job.user, job.session))
            if current is None or current.version != job.version:
                return False
            del self.parked[(job.user, job.session)]
            self.published.append(job)
            return True

    def users(self) -> list[str]:
        self._check()
        with self._lock:
            return sorted({user for user, _ in self.parked})


@dataclass
class FakeLedger:
    """Our DeadLetterLedger port in a dict; can be made unreadable or unwritable."""

    entries: dict[str, ErrorCode] = field(default_factory=dict)
    unreadable: bool = False
    unwritable: bool = False

    def recorded(self, message_id: str) -> bool:
        if self.unreadable:
            raise SessionTransientError("firestore unavailable")
        return message_id in self.entries

    def record(self, message_id: str, code: ErrorCode) -> None:
        if self.unwritable:
            raise SessionTransientError("firestore unavailable")
        self.entries[message_id] = code
