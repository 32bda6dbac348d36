"""What the handler gets (a delivery) and decides (an outcome), shared by it and the entry points."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from fluxfill.bridge.contract import INPUT_ERRORS, ORIGINAL_MESSAGE_ID_ATTRIBUTE, ErrorCode
from fluxfill.bridge.errors import BridgeError, RetryCause


@dataclass(frozen=True)
class Delivery:
    """One delivery of a Pub/Sub message, whichever entry point received it."""

    data: bytes
    message_id: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    publish_time: datetime | None = None
    delivery_attempt: int | None = None  # set by Pub/Sub only on subscriptions with a dead-letter policy

    @property
    def original_message_id(self) -> str:
        """The id a job's claim holds it under: of the message the job was first delivered as, which a copy
        the bridge published (carried over) names in an attribute; else this message's own."""
        return self.attributes.get(ORIGINAL_MESSAGE_ID_ATTRIBUTE) or self.message_id


class OutcomeKind(StrEnum):
    """What became of a delivery; every kind but RETRY is acknowledged."""

    DONE = "done"
    DUPLICATE = "duplicate"  # already finished, or held by another bridge's unexpired lease: no work done
    FAILED = "failed"
    CANCELLED = "cancelled"
    RETRY = "retry"  # nack: Pub/Sub redelivers
    # Its user has max_jobs_in_flight_per_user jobs running: the job is parked (fluxfill.bridge.parking) and
    # this message acked; published again when a slot of the user's frees. No attempt is spent, and no Pub/Sub
    # delivery either, so waiting for long never dead-letters the job.
    DEFER = "defer"
    DEAD_LETTER = "dead_letter"  # publish to the dead-letter topic, then ack
    # Its session document does not exist, and did not come within `upload_grace_s` of the job's publication:
    # the app deleted the session while the job was queued (or never made it: a fabricated message). Nothing
    # is run or written, so the session stays deleted.
    ORPHANED = "orphaned"


def cause_of(error: BaseException) -> RetryCause:
    """What a retry after `error` is counted as: its class's in the bridge's tree; anything else is a bug."""
    return error.retry_cause if isinstance(error, BridgeError) else RetryCause.INTERNAL_ERROR


@dataclass(frozen=True)
class Outcome:
    """The handler's decision, with the error code and sentence where there is one.

    `finalize` (dead letters only) records the job's end; it runs only once the dead letter is published, so
    a failed publish leaves the job to its next delivery instead of ending it without a dead letter.
    `may_carry_over` (retries only): False for a retry after a bug, which Pub/Sub's dead-lettering is left to
    end, as a message that crashes the bridge (fluxfill.bridge.carry_over). `retry_after_s` (retries only):
    the message is wanted back no sooner than this (a pulled one is nacked with that ack deadline; a pushed
    one comes back by the subscription's retry policy); 0 = at once. `cause`: a retry's, required
    (`Outcome.retry`); None for every other kind.
    """

    kind: OutcomeKind
    code: ErrorCode | None = None
    reason: str = ""
    finalize: Callable[[], None] | None = field(default=None, compare=False)
    may_carry_over: bool = True
    retry_after_s: int = 0
    cause: RetryCause | None = None

    def __post_init__(self) -> None:
        if (self.kind is OutcomeKind.RETRY) != (self.cause is not None):
            raise ValueError("a retry, and only a retry, has a cause")

    @classmethod
    def retry(cls, cause: RetryCause, reason: str, **details: Any) -> "Outcome":
        """Give the message back (nack) for `cause`, said in `reason`."""
        return cls(OutcomeKind.RETRY, reason=reason, cause=cause, **details)

    @property
    def fault(self) -> str:
        """Whose failure a failed or dead-lettered job is: `input` (contract.INPUT_ERRORS) or `service`;
        empty for every other outcome."""
        if self.kind not in (OutcomeKind.FAILED, OutcomeKind.DEAD_LETTER):
            return ""
        return "input" if self.code in INPUT_ERRORS else "service"

    @property
    def ack(self) -> bool:
        """Whether Pub/Sub may forget the message (a dead letter: once the dead-letter topic has it)."""
        return self.kind is not OutcomeKind.RETRY
