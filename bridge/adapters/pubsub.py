"""Pub/Sub adapters: the dead-letter topic the bridge publishes to itself."""

from collections.abc import Mapping

from google.api_core import exceptions as api
from google.cloud import pubsub_v1  # type: ignore[attr-defined]

from fluxfill.bridge.contract import (
    DEAD_LETTER_CODE_ATTRIBUTE,
    DEAD_LETTER_REASON_ATTRIBUTE,
    ErrorCode,
)
from fluxfill.bridge.errors import RetryableError

PUBLISH_TIMEOUT_S = 30.0
# Pub/Sub caps an attribute value at 1024 bytes.
_MAX_ATTRIBUTE_CHARS = 1000


class DeadLetterPublishError(RetryableError):
    """The dead-letter topic did not take the message: the original is nacked instead, so nothing is lost."""


class PubSubDeadLetters:
    """Publishes a message's original data and attributes, plus the bridge's error code and reason."""

    def __init__(self, publisher: pubsub_v1.PublisherClient, topic_path: str) -> None:
        self._publisher = publisher
        self.topic_path = topic_path

    def publish(self, data: bytes, attributes: Mapping[str, str], code: ErrorCode, reason: str) -> None:
        """Publish and wait for the server's message id."""
        extra = {
            DEAD_LETTER_CODE_ATTRIBUTE: code.value,
            DEAD_LETTER_REASON_ATTRIBUTE: reason[:_MAX_ATTRIBUTE_CHARS],
        }
        try:
            self._publisher.publish(self.topic_path, data, **{**attributes, **extra}).result(
                timeout=PUBLISH_TIMEOUT_S
            )
        except (api.GoogleAPICallError, api.RetryError, TimeoutError) as error:
            raise DeadLetterPublishError(f"cannot publish to {self.topic_path}: {error}") from None
