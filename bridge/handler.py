"""The job handler: one delivery in, one outcome out. It never acks or nacks; the entry points do."""

import contextvars
import math
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from fluxfill.bridge import intake, sessions, unclaimed
from fluxfill.bridge.admission import AdmissionLines
from fluxfill.bridge.context import edited, plan_context, sent
from fluxfill.bridge.contract import (
    DEFERRALS_ATTRIBUTE,
    ErrorCode,
    InvalidJobError,
    JobMessage,
    JobStatus,
    SessionField,
    parse_job,
)
from fluxfill.bridge.deferral import AtLimitHint, first_published
from fluxfill.bridge.errors import (
    ConfiguredValueRefusedError,
    JobCancelledError,
    JobDeadlineExceededError,
    LeaseLostError,
    ModelRefusedInputError,
    PermanentJobError,
    RetryableError,
    RetryCause,
    TritonInterruptedError,
    TritonUnavailableError,
)
from fluxfill.bridge.jpeg_splice import CoefficientsAhead
from fluxfill.bridge.metrics import BridgeMetrics
from fluxfill.bridge.monitor import JobMonitor, hung_after_s
from fluxfill.bridge.outcome import Delivery, Outcome, OutcomeKind, cause_of
from fluxfill.bridge.parking import Parking
from fluxfill.bridge.ports import (
    Claim,
    ClaimKind,
    InferenceRequest,
    InferenceResult,
    InpaintModel,
    JobRef,
    ObjectInfo,
    ObjectStore,
    RunControl,
    SessionStore,
)
from fluxfill.bridge.readiness import Readiness
from fluxfill.bridge.result_image import read_ahead
from fluxfill.bridge.results import result_fields, upload_results, uploaded_result
from fluxfill.bridge.runtime_config import CachedRuntimeConfig, ResolvedParameters, RuntimeConfig, resolve
from fluxfill.bridge.seeds import default_seed
from fluxfill.bridge.settings import BridgeSettings
from fluxfill.bridge.uploads import UploadWait, locate

logger = structlog.get_logger(__name__)


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
        runtime_config: CachedRuntimeConfig | None = None,
        parking: Parking | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if settings.max_jobs_in_flight_per_user and parking is None:
            raise ValueError("a per-user limit needs a parking lot for the jobs over it")
        self._settings = settings
        self._objects = objects
        self._sessions = sessions
        self._model = model
        self._metrics = metrics
        self._readiness = readiness
        # Set when the shutdown grace period is over: running jobs are cancelled and given back.
        self.hard_stop = hard_stop or threading.Event()
        self._runtime_config = runtime_config
        self._parking = parking
        self._now = now
        self._at_limit = AtLimitHint()
        # This bridge's jobs refused by Triton's full queue send again in the order they were refused, a line
        # per priority level.
        self._admission = AdmissionLines()
        # The monitors of the jobs running now: an overdue one is a hung thread (/healthz says so).
        self._monitors: set[JobMonitor] = set()
        self._monitors_lock = threading.Lock()
        metrics.overdue.set_function(lambda: len(self.overdue_jobs()))

    def overdue_jobs(self) -> list[str]:
        """Message ids of the jobs running past their deadline and margin: threads taken for hung."""
        with self._monitors_lock:
            return sorted(monitor.message_id for monitor in self._monitors if monitor.overdue)

    def handle(self, delivery: Delivery) -> Outcome:
        """Decide what becomes of one delivery; never raises."""
        return self._accounted(delivery, self._handle)

    def defer_if_user_at_limit(self, delivery: Delivery) -> Outcome | None:
        """Park the job, without a slot, a claim or a read, when its user was found at the per-user limit a
        moment ago (the hint): DEFER (or RETRY when the park failed); None when the job must go through
        `handle`. Never raises."""
        if not self._settings.max_jobs_in_flight_per_user:
            return None
        try:
            job = parse_job(delivery.data)
        except InvalidJobError:
            return None
        if not self._at_limit.at_limit(job.userId):
            return None
        return self._accounted(delivery, lambda _: self._park_hinted(job, delivery))

    def _park_hinted(self, job: JobMessage, delivery: Delivery) -> Outcome:
        """Park a job whose user was found at the per-user limit a moment ago (no read)."""
        limit = self._settings.max_jobs_in_flight_per_user
        return self._park(job, delivery, f"its user had {limit} jobs running a moment ago")

    def _park(self, job: JobMessage, delivery: Delivery, why: str) -> Outcome:
        """DEFER once the job is parked (fluxfill.bridge.parking); RETRY (nack) when it could not be;
        DUPLICATE when a job of its session first published later is parked (parking.supersedes)."""
        assert self._parking is not None  # the constructor requires it with a limit
        try:
            kept = self._parking.park(job, delivery)
        except RetryableError as error:
            return Outcome.retry(cause_of(error), f"waiting ({why}), but could not be parked: {error}")
        if not kept:
            reason = (
                f"waiting ({why}), but a job of its session first published later is parked, and is the one "
                "that runs (this one is a deleted session's, or the app's earlier job for the session)"
            )
            return Outcome(OutcomeKind.DUPLICATE, reason=reason)
        return Outcome(OutcomeKind.DEFER, reason=f"parked: {why}")

    def _accounted(self, delivery: Delivery, decide: Callable[[Delivery], Outcome]) -> Outcome:
        """`decide`'s outcome, logged with the delivery's ids and counted in the metrics."""
        self._metrics.in_flight.inc()
        # Each delivery runs on its own worker thread (or a copied context): its log ids start afresh.
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(messageId=delivery.message_id)
        published = first_published(delivery)
        try:
            if (age := self._seconds_since(published)) is not None:
                self._metrics.queue_age.observe(age)
            try:
                outcome = decide(delivery)
            except Exception:  # a bug must not escape to the entry point: the message comes back
                logger.exception("unexpected error while handling the delivery")
                outcome = Outcome.retry(RetryCause.INTERNAL_ERROR, "internal error", may_carry_over=False)
            warn = outcome.kind in (OutcomeKind.RETRY, OutcomeKind.DEAD_LETTER, OutcomeKind.ORPHANED)
            log = logger.warning if warn else logger.info
            # The cause only where there is one, a retry's (every other line carried `cause=None`).
            cause = {"cause": outcome.cause.value} if outcome.cause else {}
            log("job outcome", outcome=outcome.kind.value, code=outcome.code, reason=outcome.reason, **cause)
        finally:
            structlog.contextvars.clear_contextvars()
            self._metrics.in_flight.dec()
        self._metrics.jobs.labels(
            outcome.kind.value, outcome.code or "", outcome.fault, outcome.cause or ""
        ).inc()
        ended = outcome.kind in (OutcomeKind.DONE, OutcomeKind.FAILED, OutcomeKind.CANCELLED)
        if ended and (latency := self._seconds_since(published)) is not None:
            self._metrics.latency.observe(latency)
        return outcome

    def _handle(self, delivery: Delivery) -> Outcome:
        try:
            job = parse_job(delivery.data)
        except InvalidJobError as error:
            return unclaimed.refuse(self._sessions, self._settings.session_template, error)
        ref = JobRef(job.paths(self._settings.session_template), delivery.original_message_id, job.userId)
        structlog.contextvars.bind_contextvars(userId=job.userId, sessionId=job.sessionId)
        try:
            return self._claim_and_run(job, ref, delivery)
        except RetryableError as error:
            return Outcome.retry(cause_of(error), str(error))
        except PermanentJobError as error:  # the session store itself refused the job (its path)
            return Outcome(OutcomeKind.DEAD_LETTER, error.code, str(error))

    def _claim_and_run(self, job: JobMessage, ref: JobRef, delivery: Delivery) -> Outcome:
        if self._readiness is not None and not self._readiness.ready:
            # Not claimed, so no attempt is spent while Triton is away.
            return Outcome.retry(RetryCause.MODEL_NOT_READY, "the model is not ready")
        limit = self._settings.max_jobs_in_flight_per_user
        if limit and self._at_limit.at_limit(job.userId):
            return self._park_hinted(job, delivery)
        claim = self._sessions.claim(
            ref,
            claim_id=uuid.uuid4().hex,
            owner=self._settings.instance_id,
            lease_s=self._settings.lease_s,
            max_attempts=self._settings.max_delivery_attempts,
            max_per_user=limit,
            made_by=sessions.latest_made(first_published(delivery), self._settings.upload_grace_s),
            job_id=job.jobId,
        )
        if claim.kind is ClaimKind.USER_AT_LIMIT:
            self._at_limit.note(job.userId)
            return self._park(
                job, delivery, f"its user has {claim.user_running} jobs running, the most allowed"
            )
        if claim.kind in (ClaimKind.NO_SESSION, ClaimKind.REMADE, ClaimKind.ANOTHER_JOB):
            return self._passed_on(self._session_missing(claim, job, delivery), job, delivery)
        if claim.kind is not ClaimKind.CLAIMED:
            recorded = self._earlier_results(job, ref, claim) if claim.claimed_before else None
            ended = recorded or unclaimed.not_claimed(self._sessions, claim, ref, delivery)
            return self._passed_on(ended, job, delivery)
        try:
            return self._run_claimed(job, ref, delivery, claim)
        finally:
            # A slot of this user's is free now (or about to be): its next job need not wait for the hint,
            # and its oldest parked job goes out.
            self._at_limit.forget(job.userId)
            if self._parking is not None:
                self._parking.release_free(job.userId)

    def _passed_on(self, outcome: Outcome, job: JobMessage, delivery: Delivery) -> Outcome:
        """`outcome`, after a parked job released into a free slot of its user's that ends without running
        (cancelled or deleted while parked, ended meanwhile) has passed the slot on to the user's next parked
        job: that one waited for another end or the parking sweep, the slot free."""
        settled = outcome.kind not in (OutcomeKind.RETRY, OutcomeKind.DEFER)
        if self._parking is not None and settled and DEFERRALS_ATTRIBUTE in delivery.attributes:
            self._parking.release_free(job.userId)
        return outcome

    def _run_claimed(self, job: JobMessage, ref: JobRef, delivery: Delivery, claim: Claim) -> Outcome:
        claimed = _Claimed(ref, claim.claim_id, claim.attempt, claim.result_key)
        # Claims count the attempts that did work: a delivery bounced unclaimed (another bridge's lease,
        # Triton away) spends none, while Pub/Sub's delivery_attempt counts those too.
        logger.info(
            "job claimed",
            attempt=claimed.attempt,
            delivery_attempt=delivery.delivery_attempt,
            claimId=claimed.claim_id,
        )
        # Only a job claimed before can have results of ours (two metadata reads saved on first attempts).
        try:
            uploaded = (
                uploaded_result(self._objects, job, self._settings, self._parameters(job), claimed.result_key)
                if claimed.attempt > 1
                else None
            )
        except PermanentJobError as error:
            return self._end(claimed, Outcome(OutcomeKind.FAILED, error.code, str(error)))
        except RetryableError as error:
            # Released, as after a run's blip: the job's next delivery need not wait out the lease.
            return self._give_back(claimed, cause_of(error), str(error))
        if uploaded is not None:
            # An earlier run uploaded the results and died before its final write: record them, run nothing.
            logger.info("results already uploaded by an earlier attempt; recording them")
            return self._end_done(claimed, uploaded)
        # The job's deadline is set when inference starts: waiting on our own dependencies is not the job's.
        control = RunControl(deadline=math.inf)
        monitor = JobMonitor(
            self._sessions,
            ref,
            claimed.claim_id,
            lease_s=self._settings.lease_s,
            interval_s=self._settings.progress_interval_s,
            control=control,
            hard_stop=self.hard_stop,
            max_age_s=hung_after_s(self._settings.job_deadline_s, self._settings.upload_grace_s),
        )
        with self._monitors_lock:
            self._monitors.add(monitor)
        try:
            with monitor:
                wait = self._upload_wait(delivery, control)
                fields = self._run(job, control, monitor, delivery, wait, result_key=claimed.result_key)
        except Exception as error:  # a bug must not lose the job either: it is retried, then dead-lettered
            return self._after_failure(error, claimed, monitor)
        finally:
            with self._monitors_lock:
                self._monitors.discard(monitor)
        return self._end_done(claimed, fields)

    def _earlier_results(self, job: JobMessage, ref: JobRef, claim: Claim) -> Outcome | None:
        """Done, when an earlier run uploaded the job's results and died before its final write: a cancel
        that came after them came too late (as for a run that lived to write `done`), and the attempts it
        spent were spent on a success. None: nothing of the job's there (ended as the refusal says)."""
        try:
            uploaded = uploaded_result(
                self._objects, job, self._settings, self._parameters(job), claim.result_key
            )
        except PermanentJobError as error:  # what lies at the result's path is no result of the job's
            logger.info("no earlier results to record", error=str(error))
            return None
        if uploaded is None:
            return None
        logger.info(
            "results already uploaded by an earlier attempt; recording them", refused=claim.kind.value
        )
        if not self._sessions.finish(ref, None, JobStatus.DONE, uploaded):
            return Outcome(OutcomeKind.DUPLICATE, reason="ended, or claimed again, meanwhile")
        return Outcome(OutcomeKind.DONE)

    def _end_done(self, claimed: "_Claimed", fields: dict[str, Any]) -> Outcome:
        # With no room for the whole record (the app's data grew during the run), the result's paths alone
        # (fluxfill.bridge.sessions.fitted); refused even so, the job is dead-lettered with the reason.
        if not self._sessions.finish(claimed.ref, claimed.claim_id, JobStatus.DONE, fields):
            return _claim_taken_over()
        return Outcome(OutcomeKind.DONE)

    def _after_failure(self, error: Exception, claimed: "_Claimed", monitor: JobMonitor) -> Outcome:
        if monitor.lease_lost or isinstance(error, LeaseLostError):
            # Not ours any more: write nothing; the message comes back to whoever holds the job now.
            if monitor.superseded:
                self._let_go(claimed)
            return Outcome.retry(RetryCause.CLAIM_LOST, f"the claim was lost: {error}")
        ending = self._ending_for(error, monitor)
        if ending is not None:
            return self._end(claimed, ending)
        if isinstance(error, JobCancelledError):  # the bridge's shutdown, or Triton on its own
            return self._give_back(claimed, RetryCause.STOPPING, f"stopped: {error}")
        if isinstance(error, TritonUnavailableError) and self._readiness is not None:
            self._readiness.mark_unready(str(error))
        if not isinstance(error, RetryableError):
            logger.exception("unexpected error while running the job")
        reason = (
            str(error) if isinstance(error, RetryableError) else f"internal error: {type(error).__name__}"
        )
        if claimed.attempt < self._settings.max_delivery_attempts:
            return self._give_back(claimed, cause_of(error), reason)
        # Released first, so the exhausted job is never left under this claim's lease.
        self._sessions.release(claimed.ref, claimed.claim_id, reason, cause_of(error))
        exhausted = f"gave up after {claimed.attempt} attempts; last error: {reason}"
        return unclaimed.dead_letter_then_fail(
            self._sessions, claimed.ref, ErrorCode.RETRIES_EXHAUSTED, exhausted
        )

    def _ending_for(self, error: Exception, monitor: JobMonitor) -> Outcome | None:
        """The terminal outcome a run's error means, or None when the job may be tried again."""
        if isinstance(error, PermanentJobError):
            return Outcome(OutcomeKind.FAILED, error.code, str(error))
        if isinstance(error, JobDeadlineExceededError):
            reason = f"the run did not finish within {self._settings.job_deadline_s:g} s ({error})"
            return Outcome(OutcomeKind.FAILED, ErrorCode.DEADLINE_EXCEEDED, reason)
        if isinstance(error, JobCancelledError) and monitor.cancel_requested:
            return Outcome(OutcomeKind.CANCELLED, ErrorCode.CANCELLED, "cancelled by the app")
        return None

    def _run(
        self,
        job: JobMessage,
        control: RunControl,
        monitor: JobMonitor,
        delivery: Delivery,
        wait: UploadWait,
        *,
        result_key: str | None,
    ) -> dict[str, Any]:
        settings, timings = self._settings, {}
        started = time.monotonic()
        photo, mask, ahead = self._download(job, wait)
        height, width = photo.pixels.shape[:2]
        timings["download"] = self._phase("download", started)
        seed = job.seed if job.seed is not None else default_seed(job)
        parameters = self._parameters(job)
        # Only the part of the photo the model denoises travels, reduced when the model would shrink it
        # anyway (fluxfill.bridge.context).
        context = plan_context(mask, self._model.crop_geometry(), reduce=settings.reduce_context)
        request = InferenceRequest(
            *sent(photo.pixels, mask, context, photo.orientation),
            parameters.prompt,
            seed,
            parameters.steps,
            parameters.guidance,
            job.priority == "urgent",
        )
        if control.cancel.is_set():
            raise JobCancelledError("cancel requested before inference")
        phase_start = time.monotonic()
        control.deadline = phase_start + settings.job_deadline_s
        try:
            result = self._infer(request, control, monitor)
        except ModelRefusedInputError as error:
            where = parameters.configured_as(error.tensor) if error.tensor is not None else None
            if where is None:
                raise
            raise _configured_value_refused(error, where) from None
        timings["inference"] = self._phase("inference", phase_start)
        phase_start = time.monotonic()
        edit = edited(photo.pixels, mask, context, result.image, photo.orientation)
        used_seed = result.seed
        # The context sent and the answer (each up to a photo's size) are not held through the encoding, the
        # job's peak of memory.
        del request, result
        # Our claim is confirmed beside the encoding, and before anything is written.
        paths, encoded = upload_results(
            self._objects,
            job,
            settings,
            photo,
            edit.image,
            ahead=ahead,
            within=edit.within,
            before=edit.before,
            result_key=result_key,
            before_writing=lambda: self._confirm_claim(monitor),
        )
        timings["upload"] = self._phase("upload", phase_start)
        timings["total"] = time.monotonic() - started
        if (age := self._since_published_s(delivery)) is not None:
            timings["queue"] = max(0.0, age - timings["total"])
        total_steps = monitor.steps_seen[-1][1] if monitor.steps_seen else None
        fields = result_fields(
            job,
            self._model,
            paths,
            (width, height),
            encoded,
            seed=used_seed,
            total_steps=total_steps,
            parameters=parameters,
            context_reduction=context.reduction,
        )
        return {**fields, SessionField.TIMINGS: timings}

    def _seconds_since(self, moment: datetime | None) -> float | None:
        """Seconds from `moment` to now, never negative (clocks differ); None for no moment."""
        return None if moment is None else max(0.0, (self._now() - moment).total_seconds())

    def _since_published_s(self, delivery: Delivery) -> float | None:
        """How long ago the job was first published; None when that is not known."""
        return self._seconds_since(first_published(delivery))

    def _session_missing(self, claim: Claim, job: JobMessage, delivery: Delivery) -> Outcome:
        """The job's session document is not there: not yet, deleted, or deleted and another made under its
        id (REMADE, ANOTHER_JOB)."""
        grace = self._settings.upload_grace_s
        if claim.kind is ClaimKind.REMADE:
            return unclaimed.remade(claim, first_published(delivery), grace)
        if claim.kind is ClaimKind.ANOTHER_JOB:
            return unclaimed.another_job(claim, job)
        return unclaimed.no_session(grace, self._session_grace_left_s(delivery))

    def _session_grace_left_s(self, delivery: Delivery) -> float:
        """How much longer a missing session document may be waited for: none when the job's publication is
        not known (every redelivery would otherwise find the whole grace left)."""
        age = self._since_published_s(delivery)
        return 0.0 if age is None else self._settings.upload_grace_s - age

    def _upload_wait(self, delivery: Delivery, control: RunControl) -> UploadWait:
        """A missing original or mask is waited for until `upload_grace_s` after the job's first publication
        (from now when that is not known), or until the run is stopped."""
        grace = self._settings.upload_grace_s
        age = self._since_published_s(delivery) or 0.0
        waits = self._metrics.upload_waits
        return UploadWait(
            time.monotonic() + grace - age,
            grace,
            control.cancel,
            ended=lambda what, outcome: waits.labels(what, outcome).inc(),
        )

    def _download(
        self, job: JobMessage, wait: UploadWait
    ) -> tuple[intake.Photo, npt.NDArray[np.uint8], CoefficientsAhead | None]:
        """The upright photo, the mask fitted to it, and the original's coefficients being read (a JPEG whose
        result is spliced). Once the original's metadata passes (a missing or oversized original downloads
        nothing), the mask is fetched and decoded on a second thread, and the coefficients read on a third,
        while the photo downloads and decodes (the codecs release the GIL); a refused original is the error
        reported, as it would be one after the other."""
        settings = self._settings
        max_pixels = settings.max_image_pixels
        original_info = self._locate(job, settings.original_template, "original", wait)

        def fetch_mask() -> npt.NDArray[np.uint8]:
            mask_info = self._locate(job, settings.mask_template, "mask", wait)
            return intake.decode_mask(self._read(mask_info), max_pixels)

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mask") as pool:
            mask = pool.submit(contextvars.copy_context().run, fetch_mask)
            try:
                original = self._read(original_info)
                intake.check_header(original, "original photo", max_pixels)  # the pixel cap, before a decode
                ahead = read_ahead(original, always_png=settings.result_format == "png")
                photo = intake.read_photo(original, max_pixels)
            except BaseException:
                # The original's error ends the job: the mask's wait for its upload (up to the grace, with
                # the job's slot held) is stopped, not waited out, before the error is told.
                wait.stop.set()
                raise
            height, width = photo.pixels.shape[:2]
            return photo, intake.fit_mask(mask.result(), height, width), ahead

    def _infer(self, request: InferenceRequest, control: RunControl, monitor: JobMonitor) -> InferenceResult:
        mark = self._readiness.mark() if self._readiness is not None else 0
        line = self._admission.line_for(request)
        try:
            return line.infer(self._model, request, monitor.report_progress, control, self._metrics)
        except JobDeadlineExceededError as error:
            # A deadline fails the job only when the run had Triton all along: a Triton that hung during the
            # run (and may be back by its deadline) cost the job its time, so the job is given back instead.
            away = self._readiness.unavailable_since(mark) if self._readiness is not None else None
            if away is None:
                raise
            raise TritonInterruptedError(
                f"the run reached its deadline after Triton was unavailable during it ({away})"
            ) from error

    def _parameters(self, job: JobMessage) -> ResolvedParameters:
        """The job's own fields, completed by the runtime config (when the bridge has one)."""
        if self._runtime_config is None:
            return resolve(job, RuntimeConfig())
        return self._runtime_config.resolve(job)

    def _locate(self, job: JobMessage, template: str, what: str, wait: UploadWait) -> ObjectInfo:
        return locate(self._objects, job.paths(template), what, self._settings.max_object_bytes, wait)

    def _read(self, info: ObjectInfo) -> bytes:
        data = self._objects.read(info)
        self._metrics.downloaded_bytes.inc(len(data))
        return data

    def _phase(self, name: str, started: float) -> float:
        seconds = time.monotonic() - started
        self._metrics.phase.labels(name).observe(seconds)
        return seconds

    def _confirm_claim(self, monitor: JobMonitor) -> None:
        """Results are written only while our claim is current: asked of the store right before the upload."""
        if monitor.lease_lost:
            raise LeaseLostError("the lease could not be renewed while the job ran")
        if not monitor.confirm_claim():
            raise LeaseLostError("another claim took the job over before the upload")

    def _end(self, claimed: "_Claimed", ending: Outcome) -> Outcome:
        status = JobStatus.CANCELLED if ending.kind is OutcomeKind.CANCELLED else JobStatus.FAILED
        code = ending.code or ErrorCode.INVALID_JOB
        if not self._sessions.finish(
            claimed.ref, claimed.claim_id, status, unclaimed.error_fields(code, ending.reason)
        ):
            return _claim_taken_over()
        return ending

    def _let_go(self, claimed: "_Claimed") -> None:
        """Free the user's slot of a claim the session document no longer holds (writing nothing to it), so
        that the user's next job need not wait for the slot to lapse (`lease_s`)."""
        try:
            self._sessions.release(claimed.ref, claimed.claim_id, "the claim was lost", RetryCause.CLAIM_LOST)
        except RetryableError as error:
            logger.warning("could not free the user's slot of a lost claim; it lapses", error=str(error))

    def _give_back(self, claimed: "_Claimed", cause: RetryCause, reason: str) -> Outcome:
        self._sessions.release(claimed.ref, claimed.claim_id, reason, cause)
        return Outcome.retry(cause, reason)


@dataclass(frozen=True)
class _Claimed:
    """A job under our claim: its session, the fencing token every write carries, the attempt number, the key
    its results carry."""

    ref: JobRef
    claim_id: str
    attempt: int
    result_key: str | None


def _claim_taken_over() -> Outcome:
    # Redelivered: a job finished meanwhile is then acked as a duplicate; one still running is left alone.
    return Outcome.retry(RetryCause.CLAIM_LOST, "the claim is no longer current; not recorded")


def _configured_value_refused(error: ModelRefusedInputError, where: str) -> ConfiguredValueRefusedError:
    """A value the runtime config gave the job, refused by the model: no fault of the job's (its user may have
    sent no prompt at all), so not failed as its input; an operator mends the document, the job is tried
    again, and when its attempts run out first it is dead-lettered for a replay."""
    logger.error("the model refuses a value of the runtime config", where=where, error=str(error))
    return ConfiguredValueRefusedError(
        f"{error} (the runtime config's {where}, not the job's: mend the document with `fluxfill config set`)"
    )
