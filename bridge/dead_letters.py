"""Dead-letter each message once, however often Pub/Sub delivers it (at least once, maybe more)."""

from collections.abc import Mapping

import structlog

from fluxfill.bridge.contract import ORIGINAL_MESSAGE_ID_ATTRIBUTE, ErrorCode
from fluxfill.bridge.errors import RetryableError
from fluxfill.bridge.ports import DeadLetterLedger, DeadLetterSink

logger = structlog.get_logger(__name__)


class OncePerMessage:
    """A DeadLetterSink that skips messages its ledger has seen dead-lettered, and records the new ones.

    The ledger only saves copies: when it cannot be read the message is published anyway (a duplicate dead
    letter is better than one held back), and two bridges handling the same message at once, or a crash
    between publishing and recording, can still leave two copies. Readers deduplicate by
    `fluxfillOriginalMessageId`.
    """

    def __init__(self, sink: DeadLetterSink, ledger: DeadLetterLedger) -> None:
        self._sink = sink
        self._ledger = ledger

    def publish(self, data: bytes, attributes: Mapping[str, str], code: ErrorCode, reason: str) -> None:
        """See DeadLetterSink.publish; returns at once for a message already dead-lettered."""
        message_id = attributes.get(ORIGINAL_MESSAGE_ID_ATTRIBUTE, "")
        if message_id and self._recorded(message_id):
            logger.info("already dead-lettered; not publishing it again", code=code)
            return
        self._sink.publish(data, attributes, code, reason)
        if message_id:
            try:
                self._ledger.record(message_id, code)
            except RetryableError as error:
                logger.warning("dead letter published but not recorded", error=str(error))

    def _recorded(self, message_id: str) -> bool:
        try:
            return self._ledger.recorded(message_id)
        except RetryableError as error:
            logger.warning("dead-letter ledger unreadable; publishing anyway", error=str(error))
            return False
