"""What becomes of a delivery that is not run: a refused message, a job not claimed, an exhausted job."""

import math
from datetime import datetime
from typing import Any

from fluxfill.bridge.contract import ErrorCode, InvalidJobError, JobMessage, JobStatus, SessionField
from fluxfill.bridge.errors import RetryCause
from fluxfill.bridge.outcome import Delivery, Outcome, OutcomeKind
from fluxfill.bridge.ports import Claim, ClaimKind, JobRef, SessionStore
from fluxfill.bridge.sessions import BRIDGE_ROOM_BYTES, MAX_DOCUMENT_BYTES

# A job whose session document is not made yet comes back after this long (or when its grace ends, if
# sooner) to look again. A pulled message's ack deadline says so; Pub/Sub's retry policy may add to it.
SESSION_RECHECK_S = 5


def error_fields(code: ErrorCode, message: str) -> dict[str, Any]:
    """The session's `error` field."""
    return {SessionField.ERROR: {"code": code.value, "message": message}}


def dead_letter_then_fail(sessions: SessionStore, ref: JobRef, code: ErrorCode, reason: str) -> Outcome:
    """Dead-letter first; the failed status is written (by `finalize`) only once the dead letter is out.

    Should the publish fail, the message is nacked and its next delivery finds the job the same way (an
    exhausted job is refused by every claim), so the dead letter is retried rather than lost.
    """
    failure = error_fields(code, reason)

    def finalize() -> None:
        # No claim id: written only while no live claim holds the job.
        sessions.finish(ref, None, JobStatus.FAILED, failure)

    return Outcome(OutcomeKind.DEAD_LETTER, code, reason, finalize=finalize)


def refuse(sessions: SessionStore, session_template: str, error: InvalidJobError) -> Outcome:
    """A message that is no valid job: dead-lettered, and its session (when its ids are usable) failed."""
    if error.ids is None:
        return Outcome(OutcomeKind.DEAD_LETTER, error.code, str(error))
    user, session = error.ids
    ref = JobRef(session_template.format(userId=user, sessionId=session), "")
    return dead_letter_then_fail(sessions, ref, error.code, str(error))


def not_claimed(sessions: SessionStore, claim: Claim, ref: JobRef, delivery: Delivery) -> Outcome:
    """The outcome of a delivery whose claim found the job finished, running, exhausted or cancelled (a
    session that does not exist: `no_session`)."""
    if claim.kind is ClaimKind.FINISHED:
        return Outcome(OutcomeKind.DUPLICATE, reason=f"already {claim.status}")
    if claim.kind is ClaimKind.BUSY:
        return _running_elsewhere(claim, delivery)
    if claim.kind is ClaimKind.EXHAUSTED:
        last = claim.last_error or "none recorded"
        reason = f"gave up after {claim.attempt} attempts; last error: {last}"
        return dead_letter_then_fail(sessions, ref, ErrorCode.RETRIES_EXHAUSTED, reason)
    if claim.kind is ClaimKind.TOO_LARGE:
        reason = (
            f"the session document is {claim.document_bytes} bytes: the bridge's fields (up to "
            f"{BRIDGE_ROOM_BYTES} bytes: progress, result, timings) would take it past Firestore's limit of "
            f"{MAX_DOCUMENT_BYTES} bytes a document; keep the app's own data in it smaller"
        )
        return dead_letter_then_fail(sessions, ref, ErrorCode.INVALID_JOB, reason)
    message = (
        "cancelled by the app after an earlier run stopped without a result"
        if claim.claimed_before
        else "cancelled by the app before it started"
    )
    sessions.finish(ref, None, JobStatus.CANCELLED, error_fields(ErrorCode.CANCELLED, message))
    return Outcome(OutcomeKind.CANCELLED, ErrorCode.CANCELLED, message)


def no_session(grace_s: float, grace_left_s: float) -> Outcome:
    """The outcome of a delivery whose session document does not exist, `grace_left_s` before the end of the
    `grace_s` an app's writes for a job may land after its publication.

    Within the grace the message comes back to look again, holding no slot meanwhile: an app may publish
    before its write of the document has reached Firestore (a write queued offline by the app's SDK, then a
    function called to publish). After it, the session was deleted by the app, or never made: orphaned.
    """
    if grace_left_s > 0:
        reason = (
            f"its session document does not exist yet; looked for again until {grace_s:g} s after the job's "
            "publication (an app that publishes before its document is written)"
        )
        after_s = max(1, min(SESSION_RECHECK_S, math.ceil(grace_left_s)))
        return Outcome.retry(RetryCause.SESSION_NOT_YET, reason, retry_after_s=after_s)
    reason = "its session document does not exist (the app deleted the session, or never made it)"
    if grace_s:
        reason += f"; it was not made within {grace_s:g} s of the job's publication"
    return Outcome(OutcomeKind.ORPHANED, reason=reason)


def remade(claim: Claim, first_published: datetime | None, grace_s: float) -> Outcome:
    """The outcome of a delivery whose session document was made after it could be the job's (REMADE): the
    job of a session the app deleted, the document another's under its id. Acked as orphaned: its own session
    is gone, and the document's own job runs it."""
    made = claim.session_made
    after = f"{(made - first_published).total_seconds():.0f} s " if made and first_published else ""
    reason = (
        f"its session document was made {after}after the job was first published, later than the "
        f"{grace_s:g} s an app's document may follow its job: the job is of a session deleted since, and the "
        "document of another made under its id, which its own job runs; nothing run, nothing written"
    )
    return Outcome(OutcomeKind.ORPHANED, reason=reason)


def another_job(claim: Claim, job: JobMessage) -> Outcome:
    """The outcome of a delivery whose session document names another job (ANOTHER_JOB): acked as orphaned,
    nothing written; the document's own job runs it."""
    reason = (
        f"its session document names another job (jobId {claim.session_job_id!r}; this job's is "
        f"{job.jobId!r}): the job is of a session deleted since and made again under its id, or the app's "
        "earlier job for the session; nothing run, nothing written"
    )
    return Outcome(OutcomeKind.ORPHANED, reason=reason)


def _running_elsewhere(claim: Claim, delivery: Delivery) -> Outcome:
    if claim.holder_message_id and claim.holder_message_id != delivery.original_message_id:
        # Another message of the same job runs under a live claim: that message stays unacked until the run
        # ends, and comes back if it does not, so this copy is not needed. A copy carried over from the
        # running message itself is not another: it may be all that is left should the run die.
        return Outcome(OutcomeKind.DUPLICATE, reason="another delivery of this job is running")
    return Outcome.retry(RetryCause.RUNNING_ELSEWHERE, "the job is running under a live claim")
