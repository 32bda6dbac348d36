"""From the handler's outcome to ack or nack: the one decision both entry points share."""

import structlog

from fluxfill.bridge.carry_over import CarryOver
from fluxfill.bridge.contract import ORIGINAL_MESSAGE_ID_ATTRIBUTE, ErrorCode
from fluxfill.bridge.errors import PermanentJobError, RetryableError
from fluxfill.bridge.outcome import Delivery, Outcome, OutcomeKind
from fluxfill.bridge.ports import DeadLetterSink

logger = structlog.get_logger(__name__)


def should_ack(
    outcome: Outcome,
    delivery: Delivery,
    dead_letters: DeadLetterSink | None,
    carry_over: CarryOver | None = None,
) -> bool:
    """True to ack; a dead-letter outcome is acked only once the dead-letter topic has the message, a retry on
    one of the subscription's last deliveries once the job is carried over to a new message."""
    if outcome.kind is OutcomeKind.RETRY:
        return bool(
            carry_over and outcome.may_carry_over and carry_over.instead_of_giving_back(delivery, "retry")
        )
    if outcome.kind is not OutcomeKind.DEAD_LETTER:
        return outcome.ack
    if dead_letters is None:
        # Nothing may be lost: the subscription's own dead-letter policy, if any, moves it after its attempts;
        # the session records the failure meanwhile.
        logger.error("no dead-letter topic configured; nacking", code=outcome.code, reason=outcome.reason)
        _finalize(outcome)
        return False
    attributes = {**delivery.attributes, ORIGINAL_MESSAGE_ID_ATTRIBUTE: delivery.original_message_id}
    try:
        dead_letters.publish(delivery.data, attributes, outcome.code or ErrorCode.INVALID_JOB, outcome.reason)
    except RetryableError as error:
        logger.error("dead-lettering failed; nacking", error=str(error))
        return False
    logger.warning("dead-lettered", code=outcome.code)
    # A redelivery after a failed final write finds the dead letter in the ledger and writes again.
    return _finalize(outcome)


def _finalize(outcome: Outcome) -> bool:
    if outcome.finalize is None:
        return True
    try:
        outcome.finalize()
    except RetryableError as error:
        logger.error("dead-lettered, but the session's end was not recorded; nacking", error=str(error))
        return False
    except PermanentJobError as error:
        # Firestore refuses the write itself (a document with no room left for it): no redelivery could
        # record it either, and the dead letter holds the reason.
        logger.error("dead-lettered; the session's end cannot be recorded", error=str(error))
    return True
