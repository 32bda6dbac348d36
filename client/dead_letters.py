"""`fluxfill dlq`: read the dead-letter subscription with each job's failure reason, and replay jobs.

Listing leases the messages only while reading them, then hands them straight back (ack deadline 0), so a
listing never consumes anything. A replay starts the session afresh (queued, attempts reset, the old error
kept under `replayed`), republishes the original data to the jobs topic without the bridge's dead-letter
attributes and first-publication time (a replay is the job's publication afresh), and only then acks the
dead letter; copies of one message (same `fluxfillOriginalMessageId`) are republished once and all acked. A
dead letter that is not a valid job, or whose session runs under a live claim, is refused with its reason and
stays in the queue.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc  # type: ignore[import-untyped]
from google.api_core import exceptions as api

from fluxfill.bridge.contract import (
    DEAD_LETTER_CODE_ATTRIBUTE,
    DEAD_LETTER_REASON_ATTRIBUTE,
    FIRST_PUBLISHED_ATTRIBUTE,
    ORIGINAL_MESSAGE_ID_ATTRIBUTE,
    InvalidJobError,
    JobStatus,
    SessionField,
    parse_job,
)
from fluxfill.client.errors import ServiceUnavailableError
from fluxfill.client.jobs import JobSystem, SessionRef, document_map, google_errors

_BRIDGE_ATTRIBUTES = {
    DEAD_LETTER_CODE_ATTRIBUTE,
    DEAD_LETTER_REASON_ATTRIBUTE,
    ORIGINAL_MESSAGE_ID_ATTRIBUTE,
    # A parked or carried-over job's first publication: kept, it would date the replay before a session the
    # app made again under its id since, and the bridge would take the replay for the deleted session's job
    # (orphaned, the session left queued by the replay's requeue).
    FIRST_PUBLISHED_ATTRIBUTE,
}
PULL_BATCH = 100
# A pull waits this long when nothing is there; the first waits longer, for a slow start.
FIRST_PULL_TIMEOUT_S = 3.0
NEXT_PULL_TIMEOUT_S = 1.0
# How long the call that tells an empty queue from a server that does not answer may take.
ANSWER_TIMEOUT_S = 2.0


# Set by Pub/Sub on a message it dead-letters itself: how often the source subscription delivered it.
PUBSUB_DELIVERY_COUNT_ATTRIBUTE = "CloudPubSubDeadLetterSourceDeliveryCount"
# `dlq list`'s code for such a job that no bridge ever claimed.
UNCLAIMED = "unclaimed"


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered job and why it failed."""

    message_id: str
    ack_id: str
    data: bytes
    attributes: dict[str, str]
    ref: SessionRef | None
    code: str
    reason: str
    not_a_job: str | None = None  # why replaying it would only dead-letter it again; None for a valid job
    priority: str = "bulk"  # the job's lane: a replay goes back to that lane's topic
    job_id: str | None = None  # the job's `jobId`: a replay onto a session naming another is refused

    @property
    def origin(self) -> str:
        """The dead-lettered message's id, which copies of one message (dead-lettered twice) share."""
        return self.attributes.get(ORIGINAL_MESSAGE_ID_ATTRIBUTE) or self.message_id

    def matches(self, wanted: str) -> bool:
        """Selected by its message id, its original message id, or its session id."""
        original = self.attributes.get(ORIGINAL_MESSAGE_ID_ATTRIBUTE)
        return wanted in {self.message_id, original, self.ref.session if self.ref else None}


@dataclass(frozen=True)
class ReplayReport:
    """What a replay did: the dead letters republished, and those refused with the reason."""

    replayed: list[DeadLetter]
    refused: list[tuple[DeadLetter, str]]


def _read_job(data: bytes, jobs: JobSystem) -> tuple[SessionRef | None, str | None, str, str | None]:
    """The dead letter's session (when its ids are usable), why it is not a valid job (None if it is), its
    priority and its `jobId`."""
    try:
        job = parse_job(data)
    except InvalidJobError as error:
        refusal = f"not a valid job ({error.code.value}): replaying it would only dead-letter it again"
        return (jobs.ref(*error.ids) if error.ids else None), refusal, "bulk", None
    return jobs.ref(job.userId, job.sessionId), None, job.priority, job.jobId


def _answering(subscriber: Any, path: str) -> bool:
    """Whether Pub/Sub answers calls. A pull that ends at its deadline found nothing to deliver only when it
    does: on a channel that never connected (a server that took the connection and never answered), or from a
    server that takes calls and answers none (frozen mid-command), it says nothing of the queue, and `dlq
    list` reported "0 dead-lettered job(s)", exit 0. Any answer to a second, cheap call tells, a refusal too
    (reading a subscription's settings takes a permission beyond consuming it)."""
    try:
        grpc.channel_ready_future(subscriber.transport.grpc_channel).result(timeout=0.5)
    except grpc.FutureTimeoutError:
        return False
    try:
        subscriber.get_subscription(request={"subscription": path}, timeout=ANSWER_TIMEOUT_S, retry=None)
    except (api.DeadlineExceeded, api.ServiceUnavailable):
        return False
    except api.GoogleAPICallError:
        return True
    return True


class DeadLetterQueue:
    """The dead-letter subscription of a JobSystem."""

    def __init__(self, jobs: JobSystem) -> None:
        jobs.require("dead_letter_subscription")
        self._jobs = jobs
        self._subscriber = jobs.client("subscriber")
        self._path = self._subscriber.subscription_path(
            jobs.settings.project, jobs.settings.dead_letter_subscription
        )

    def _pull_all(self) -> list[DeadLetter]:
        letters: dict[str, DeadLetter] = {}
        while True:
            timeout_s = NEXT_PULL_TIMEOUT_S if letters else FIRST_PULL_TIMEOUT_S
            with google_errors(f"pull from {self._path}"):
                try:
                    response = self._subscriber.pull(
                        request={"subscription": self._path, "max_messages": PULL_BATCH}, timeout=timeout_s
                    )
                except api.DeadlineExceeded:
                    if not _answering(self._subscriber, self._path):
                        raise ServiceUnavailableError(
                            f"cannot pull from {self._path}: Pub/Sub did not answer within {timeout_s:g} s",
                            retryable=True,
                        ) from None
                    break  # nothing (more) to deliver
            fresh = [m for m in response.received_messages if m.message.message_id not in letters]
            if not fresh:
                break
            for received in fresh:
                letters[received.message.message_id] = self._describe(received)
        return sorted(letters.values(), key=lambda letter: letter.message_id)

    def _describe(self, received: Any) -> DeadLetter:
        message = received.message
        data, attributes = bytes(message.data), dict(message.attributes)
        ref, not_a_job, priority, job_id = _read_job(data, self._jobs)
        code = attributes.get(DEAD_LETTER_CODE_ATTRIBUTE, "")
        reason = attributes.get(DEAD_LETTER_REASON_ATTRIBUTE, "")
        if not code and ref is not None:
            # Dead-lettered by Pub/Sub after too many deliveries: the session document holds the last error,
            # unless no bridge ever took the job (refused while busy or not ready: push overload).
            session = self._jobs.session(ref) or {}
            error = document_map(session.get(SessionField.ERROR.value))
            code, reason = str(error.get("code", "")), str(error.get("message", ""))
            deliveries = attributes.get(PUBSUB_DELIVERY_COUNT_ATTRIBUTE)
            if (
                not code
                and deliveries
                and session.get(SessionField.STATUS.value, JobStatus.QUEUED) == JobStatus.QUEUED
            ):
                code = UNCLAIMED
                reason = (
                    f"dead-lettered by Pub/Sub after {deliveries} deliveries that no bridge took (busy or "
                    "not ready); the job never ran and its session is still queued: replay it"
                )
        return DeadLetter(
            message_id=str(message.message_id),
            ack_id=str(received.ack_id),
            data=data,
            attributes=attributes,
            ref=ref,
            code=code or "unknown",
            reason=reason or f"no reason recorded (delivered {received.delivery_attempt or '?'} times)",
            not_a_job=not_a_job,
            priority=priority,
            job_id=job_id,
        )

    def _settle(self, ack: list[str], release: list[str]) -> None:
        with google_errors(f"settle messages of {self._path}"):
            if ack:
                self._subscriber.acknowledge(request={"subscription": self._path, "ack_ids": ack})
            if release:
                self._subscriber.modify_ack_deadline(
                    request={"subscription": self._path, "ack_ids": release, "ack_deadline_seconds": 0}
                )

    def peek(self) -> list[DeadLetter]:
        """Every dead letter now, left in the queue."""
        letters = self._pull_all()
        self._settle([], [letter.ack_id for letter in letters])
        return letters

    def replay(self, selected: Callable[[DeadLetter], bool], reason: str = "replayed") -> ReplayReport:
        """Start the selected jobs afresh and republish them, then ack their dead letters; the rest stay."""
        letters = self._pull_all()
        report = ReplayReport([], [])
        copies: list[DeadLetter] = []  # of a message replayed above: acked, not republished
        try:
            for letter in letters:
                if not selected(letter):
                    continue
                if any(letter.origin == done.origin for done in report.replayed):
                    copies.append(letter)
                    continue
                refusal = letter.not_a_job
                if refusal is None and letter.ref is not None:
                    refusal = self._jobs.requeue(letter.ref, reason, letter.job_id)
                if refusal is not None:
                    report.refused.append((letter, refusal))
                    continue
                attributes = {k: v for k, v in letter.attributes.items() if k not in _BRIDGE_ATTRIBUTES}
                self._jobs.publish(letter.data, attributes, letter.priority)
                report.replayed.append(letter)
        finally:
            # Whatever was not replayed (a refusal or a failure midway included) goes back to the queue.
            done = [letter.ack_id for letter in report.replayed + copies]
            self._settle(done, [letter.ack_id for letter in letters if letter.ack_id not in done])
        return report
