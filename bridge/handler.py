"""The job handler: one delivery in, one outcome out. It never acks or nacks; the entry points do."""

import hashlib
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from fluxfill.bridge import intake
from fluxfill.bridge.admission import infer_when_admitted
from fluxfill.bridge.contract import (
    PREVIEW_MAX_SIDE,
    ErrorCode,
    InvalidJobError,
    JobMessage,
    JobStatus,
    SessionField,
    parse_job,
)
from fluxfill.bridge.errors import (
    JobCancelledError,
    JobDeadlineExceededError,
    PermanentJobError,
    RetryableError,
    TritonUnavailableError,
)
from fluxfill.bridge.metrics import BridgeMetrics
from fluxfill.bridge.monitor import JobMonitor
from fluxfill.bridge.outcome import Delivery, Outcome, OutcomeKind
from fluxfill.bridge.ports import (
    Claim,
    ClaimKind,
    InferenceRequest,
    InpaintModel,
    JobRef,
    ObjectStore,
    RunControl,
    SessionStore,
)
from fluxfill.bridge.readiness import Readiness
from fluxfill.bridge.settings import BridgeSettings
from fluxfill.inpaint.contract import MAX_SEED

logger = structlog.get_logger(__name__)


def default_seed(job: JobMessage) -> int:
    """A seed fixed by the session, so a retried job repaints exactly what an earlier attempt uploaded."""
    digest = hashlib.sha256(f"{job.userId}/{job.sessionId}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & MAX_SEED


class JobHandler:
    """Claims a job, runs it on Triton between Storage reads and create-only writes, records its end."""

    def __init__(
        self,
        settings: BridgeSettings,
        objects: ObjectStore,
        sessions: SessionStore,
        model: InpaintModel,
        metrics: BridgeMetrics,
        *,
        readiness: Readiness | None = None,
        hard_stop: threading.Event | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._settings = settings
        self._objects = objects
        self._sessions = sessions
        self._model = model
        self._metrics = metrics
        self._readiness = readiness
        # Set when the shutdown grace period is over: running jobs are cancelled and given back.
        self.hard_stop = hard_stop or threading.Event()
        self._now = now

    def handle(self, delivery: Delivery) -> Outcome:
        """Decide what becomes of one delivery; never raises."""
        self._metrics.in_flight.inc()
        if delivery.publish_time is not None:
            self._metrics.queue_age.observe(max(0.0, (self._now() - delivery.publish_time).total_seconds()))
        # Each delivery runs on its own worker thread (or a copied context): its log ids start afresh.
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(messageId=delivery.message_id)
        try:
            outcome = self._handle(delivery)
            warn = outcome.kind in (OutcomeKind.RETRY, OutcomeKind.DEAD_LETTER)
            log = logger.warning if warn else logger.info
            log("job outcome", outcome=outcome.kind.value, code=outcome.code, reason=outcome.reason)
        finally:
            structlog.contextvars.clear_contextvars()
            self._metrics.in_flight.dec()
        self._metrics.jobs.labels(outcome.kind.value).inc()
        ended = outcome.kind in (OutcomeKind.DONE, OutcomeKind.FAILED, OutcomeKind.CANCELLED)
        if ended and delivery.publish_time is not None:
            self._metrics.latency.observe(max(0.0, (self._now() - delivery.publish_time).total_seconds()))
        return outcome

    def _handle(self, delivery: Delivery) -> Outcome:
        try:
            job = parse_job(delivery.data)
        except InvalidJobError as error:
            return self._refuse(delivery, error)
        ref = JobRef(job.paths(self._settings.session_template), delivery.message_id)
        structlog.contextvars.bind_contextvars(userId=job.userId, sessionId=job.sessionId)
        try:
            return self._claim_and_run(job, ref, delivery)
        except RetryableError as error:
            return Outcome(OutcomeKind.RETRY, reason=str(error))

    def _refuse(self, delivery: Delivery, error: InvalidJobError) -> Outcome:
        if error.ids is not None:
            user, session = error.ids
            document = self._settings.session_template.format(userId=user, sessionId=session)
            try:
                self._sessions.finish(
                    JobRef(document, delivery.message_id),
                    None,
                    JobStatus.FAILED,
                    _error(error.code, str(error)),
                )
            except RetryableError as transient:
                return Outcome(OutcomeKind.RETRY, reason=str(transient))
        return Outcome(OutcomeKind.DEAD_LETTER, error.code, str(error))

    def _claim_and_run(self, job: JobMessage, ref: JobRef, delivery: Delivery) -> Outcome:
        if self._readiness is not None and not self._readiness.ready:
            # Not claimed, so no attempt is spent while Triton is away.
            return Outcome(OutcomeKind.RETRY, reason="the model is not ready")
        owner = self._settings.instance_id
        claim = self._sessions.claim(ref, owner, self._settings.lease_s)
        if claim.kind is not ClaimKind.CLAIMED:
            return self._not_claimed(claim, ref)
        # Claims count the attempts that did work: a delivery bounced unclaimed (another bridge's lease,
        # Triton away) spends none, while Pub/Sub's delivery_attempt counts those too.
        attempt = claim.attempt
        logger.info("job claimed", attempt=attempt, delivery_attempt=delivery.delivery_attempt)
        control = RunControl(deadline=time.monotonic() + self._settings.job_deadline_s)
        monitor = JobMonitor(
            self._sessions,
            ref,
            owner,
            lease_s=self._settings.lease_s,
            interval_s=self._settings.progress_interval_s,
            control=control,
            hard_stop=self.hard_stop,
        )
        try:
            with monitor:
                fields = self._run(job, control, monitor, delivery)
        except Exception as error:  # a bug must not lose the job either: it is retried, then dead-lettered
            return self._after_failure(error, ref, attempt, monitor)
        if not self._sessions.finish(ref, owner, JobStatus.DONE, fields):
            return Outcome(OutcomeKind.DUPLICATE, reason="finished meanwhile by someone else")
        return Outcome(OutcomeKind.DONE)

    def _not_claimed(self, claim: Claim, ref: JobRef) -> Outcome:
        if claim.kind is ClaimKind.FINISHED:
            return Outcome(OutcomeKind.DUPLICATE, reason=f"already {claim.status}")
        if claim.kind is ClaimKind.BUSY:
            return Outcome(OutcomeKind.RETRY, reason="another bridge holds the job's lease")
        message = "cancelled by the app before it started"
        self._sessions.finish(ref, None, JobStatus.CANCELLED, _error(ErrorCode.CANCELLED, message))
        return Outcome(OutcomeKind.CANCELLED, ErrorCode.CANCELLED, message)

    def _after_failure(self, error: Exception, ref: JobRef, attempt: int, monitor: JobMonitor) -> Outcome:
        if isinstance(error, PermanentJobError):
            return self._end(ref, JobStatus.FAILED, OutcomeKind.FAILED, error.code, str(error))
        if isinstance(error, JobDeadlineExceededError):
            reason = f"the job did not finish within {self._settings.job_deadline_s:g} s ({error})"
            return self._end(ref, JobStatus.FAILED, OutcomeKind.FAILED, ErrorCode.DEADLINE_EXCEEDED, reason)
        if isinstance(error, JobCancelledError):
            if monitor.cancel_requested:
                reason = "cancelled by the app"
                return self._end(ref, JobStatus.CANCELLED, OutcomeKind.CANCELLED, ErrorCode.CANCELLED, reason)
            return self._give_back(ref, f"stopped: {error}")
        if isinstance(error, TritonUnavailableError) and self._readiness is not None:
            self._readiness.mark_unready(str(error))
        if not isinstance(error, RetryableError):
            logger.exception("unexpected error while running the job")
        reason = (
            str(error) if isinstance(error, RetryableError) else f"internal error: {type(error).__name__}"
        )
        return self._retry_or_exhaust(ref, attempt, reason)

    def _run(
        self, job: JobMessage, control: RunControl, monitor: JobMonitor, delivery: Delivery
    ) -> dict[str, Any]:
        settings, timings = self._settings, {}
        started = time.monotonic()
        photo = intake.decode_photo(
            self._fetch(job, settings.original_template, "original"), settings.max_image_pixels
        )
        height, width = photo.shape[:2]
        mask = intake.fit_mask(
            intake.decode_mask(self._fetch(job, settings.mask_template, "mask"), settings.max_image_pixels),
            height,
            width,
        )
        timings["download"] = self._phase("download", started)
        seed = job.seed if job.seed is not None else default_seed(job)
        request = InferenceRequest(
            photo, mask, job.prompt, seed, job.steps, job.guidance, job.priority == "urgent"
        )
        if control.cancel.is_set():
            raise JobCancelledError("cancel requested before inference")
        phase_start = time.monotonic()
        result = infer_when_admitted(self._model, request, monitor.report_progress, control, self._metrics)
        timings["inference"] = self._phase("inference", phase_start)
        phase_start = time.monotonic()
        edited_path, preview_path = job.paths(settings.edited_template), job.paths(settings.preview_template)
        # Create-only: an earlier attempt's upload (same seed, same image) counts as done.
        self._objects.create(edited_path, intake.encode_png(result.image), "image/png")
        self._objects.create(
            preview_path, intake.encode_preview(result.image, PREVIEW_MAX_SIDE), "image/jpeg"
        )
        timings["upload"] = self._phase("upload", phase_start)
        timings["total"] = time.monotonic() - started
        if delivery.publish_time is not None:
            timings["queue"] = max(
                0.0, (self._now() - delivery.publish_time).total_seconds() - timings["total"]
            )
        total_steps = monitor.steps_seen[-1][1] if monitor.steps_seen else None
        return {
            SessionField.PROGRESS: {"step": total_steps, "total": total_steps},
            SessionField.RESULT: {
                "paths": {"edited": edited_path, "preview": preview_path},
                "width": width,
                "height": height,
                "seed": result.seed,
            },
            SessionField.TIMINGS: timings,
            SessionField.MODEL: {
                "model": self._model.name,
                "protocol": self._model.protocol,
                "prompt": job.prompt,
                "steps": job.steps,
                "guidance": job.guidance,
                "seed": result.seed,
                "priority": job.priority,
            },
        }

    def _fetch(self, job: JobMessage, template: str, what: str) -> bytes:
        missing = ErrorCode.ORIGINAL_MISSING if what == "original" else ErrorCode.MASK_MISSING
        pattern = job.paths(template)
        info = self._objects.find(pattern)
        if info is None:
            raise PermanentJobError(missing, f"the {what} {pattern} does not exist in the bucket")
        if info.size > self._settings.max_object_bytes:
            raise PermanentJobError(
                ErrorCode.OBJECT_TOO_LARGE,
                f"the {what} {info.path} is {info.size} bytes, more than the limit of "
                f"{self._settings.max_object_bytes}; it was not downloaded",
            )
        data = self._objects.read(info)
        self._metrics.downloaded_bytes.inc(len(data))
        return data

    def _phase(self, name: str, started: float) -> float:
        seconds = time.monotonic() - started
        self._metrics.phase.labels(name).observe(seconds)
        return seconds

    def _end(
        self, ref: JobRef, status: JobStatus, kind: OutcomeKind, code: ErrorCode, reason: str
    ) -> Outcome:
        if not self._sessions.finish(ref, self._settings.instance_id, status, _error(code, reason)):
            return Outcome(OutcomeKind.DUPLICATE, reason="finished meanwhile by someone else")
        return Outcome(kind, code, reason)

    def _give_back(self, ref: JobRef, reason: str) -> Outcome:
        self._sessions.release(ref, self._settings.instance_id, reason)
        return Outcome(OutcomeKind.RETRY, reason=reason)

    def _retry_or_exhaust(self, ref: JobRef, attempt: int, reason: str) -> Outcome:
        if attempt < self._settings.max_delivery_attempts:
            return self._give_back(ref, reason)
        exhausted = f"gave up after {attempt} attempts; last error: {reason}"
        if not self._sessions.finish(
            ref, self._settings.instance_id, JobStatus.FAILED, _error(ErrorCode.RETRIES_EXHAUSTED, exhausted)
        ):
            return Outcome(OutcomeKind.DUPLICATE, reason="finished meanwhile by someone else")
        return Outcome(OutcomeKind.DEAD_LETTER, ErrorCode.RETRIES_EXHAUSTED, exhausted)


def _error(code: ErrorCode, message: str) -> dict[str, Any]:
    return {SessionField.ERROR: {"code": code.value, "message": message}}
