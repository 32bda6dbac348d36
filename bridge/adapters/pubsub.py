"""Pub/Sub adapters: the dead-letter topic the bridge publishes to itself.

Attributes are data, never keyword arguments: a message may carry any attribute name (`timeout`, `retry`,
`ordering_key` ...), so the dead letter is published through the GAPIC call with an explicit attribute map.
Pub/Sub's limits are applied before publishing: a copy that would exceed them carries a truncated payload,
and says so, instead of failing forever.
"""

import os
from collections.abc import Mapping
from typing import Any

import grpc  # type: ignore[import-untyped]
from google.api_core import exceptions as api
from google.api_core.retry import Retry, if_exception_type
from google.cloud import pubsub_v1  # type: ignore[attr-defined]
from google.pubsub_v1.services.publisher.client import PublisherClient as GeneratedPublisherClient
from google.pubsub_v1.services.publisher.transports.grpc import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports.grpc import SubscriberGrpcTransport

from fluxfill.bridge.contract import (
    BULK_LANE,
    CARRIED_OVER_ATTRIBUTE,
    DEAD_LETTER_CODE_ATTRIBUTE,
    DEAD_LETTER_REASON_ATTRIBUTE,
    DEFERRALS_ATTRIBUTE,
    FIRST_PUBLISHED_ATTRIBUTE,
    ORIGINAL_MESSAGE_ID_ATTRIBUTE,
    ErrorCode,
)
from fluxfill.bridge.errors import RetryableError, RetryCause

PUBLISH_TIMEOUT_S = 30.0
# What a job published again keeps whatever else Pub/Sub's limits drop (fluxfill.bridge.parking, carry_over).
KEPT_ATTRIBUTES = (
    DEFERRALS_ATTRIBUTE,
    FIRST_PUBLISHED_ATTRIBUTE,
    ORIGINAL_MESSAGE_ID_ATTRIBUTE,
    CARRIED_OVER_ATTRIBUTE,
)
# Pub/Sub's limits: 10 MB a request (hence MAX_DATA_BYTES), 100 attributes, keys of 256 bytes, values of 1024.
MAX_ATTRIBUTES = 100
MAX_KEY_BYTES = 256
MAX_VALUE_BYTES = 1024
# A payload beyond this is cut to TRUNCATED_DATA_BYTES: enough to see what it was, far from the limit.
MAX_DATA_BYTES = 9_000_000
TRUNCATED_DATA_BYTES = 64_000
TRUNCATED_ATTRIBUTE = "fluxfillTruncatedFromBytes"


# What Google's client retries of a publish by default (its codes).
_PUBLISH_RETRIED = if_exception_type(
    api.Aborted,
    api.Cancelled,
    api.DeadlineExceeded,
    api.InternalServerError,
    api.ResourceExhausted,
    api.ServiceUnavailable,
    api.Unknown,
)
# Real Pub/Sub channels carry any message size; the library's emulator channel keeps gRPC's 4 MB receive
# default, which a message near Pub/Sub's 10 MB limit exceeds.
_UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


def _emulator_transport(transport: Any) -> Any:
    """`transport` over an unlimited channel to the emulator; None against real Pub/Sub."""
    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    return transport(channel=grpc.insecure_channel(host, options=_UNLIMITED)) if host else None


def publisher_client(credentials: Any) -> pubsub_v1.PublisherClient:
    """A PublisherClient; against the emulator, over a channel without gRPC's 4 MB limit."""
    transport = _emulator_transport(PublisherGrpcTransport)
    if transport is None:
        return pubsub_v1.PublisherClient(credentials=credentials)
    return pubsub_v1.PublisherClient(transport=transport)


def subscriber_client(credentials: Any) -> pubsub_v1.SubscriberClient:
    """A SubscriberClient; against the emulator, over a channel without gRPC's 4 MB limit."""
    transport = _emulator_transport(SubscriberGrpcTransport)
    if transport is None:
        return pubsub_v1.SubscriberClient(credentials=credentials)
    return pubsub_v1.SubscriberClient(transport=transport)


class DeadLetterPublishError(RetryableError):
    """The dead-letter topic did not take the message: the original is nacked instead, so nothing is lost."""

    retry_cause = RetryCause.PUBSUB


def _utf8_prefix(text: str, limit: int) -> str:
    return text.encode()[:limit].decode(errors="ignore")


def dead_letter_message(
    data: bytes, attributes: Mapping[str, str], code: ErrorCode, reason: str
) -> tuple[bytes, dict[str, str]]:
    """The copy to publish: within Pub/Sub's limits whatever the original carried, our attributes kept."""
    ours = {
        DEAD_LETTER_CODE_ATTRIBUTE: code.value,
        DEAD_LETTER_REASON_ATTRIBUTE: _utf8_prefix(reason, MAX_VALUE_BYTES),
    }
    if len(data) > MAX_DATA_BYTES:
        ours[TRUNCATED_ATTRIBUTE] = str(len(data))
        data = data[:TRUNCATED_DATA_BYTES]
    return data, bounded_attributes(attributes, ours)


def bounded_attributes(attributes: Mapping[str, str], ours: Mapping[str, str]) -> dict[str, str]:
    """`attributes` within Pub/Sub's limits, with `ours` added: keys reserved by Pub/Sub (goog*) or over its
    limits are dropped, and ours always win."""
    kept: dict[str, str] = {}
    for key, value in attributes.items():
        if len(kept) >= MAX_ATTRIBUTES - len(ours) - 1:
            break
        if key in ours or key.startswith("goog") or not 0 < len(key.encode()) <= MAX_KEY_BYTES:
            continue
        kept[key] = _utf8_prefix(value, MAX_VALUE_BYTES)
    return {**kept, **ours}


def _retried_within(seconds: float) -> Retry:
    """Publish's own retry, ended within `seconds`: Google's client retries an attempt that got no answer
    (DeadlineExceeded) for 600 s, whatever each attempt's timeout (a publish to a Pub/Sub that took the
    connection and never answered held a job's dead-lettering, a parked job's release or `fluxfill submit` for
    ten minutes). A publish retried may have landed the first time: a job published twice runs once."""
    return Retry(predicate=_PUBLISH_RETRIED, initial=0.1, maximum=4.0, timeout=seconds)


def publish_message(
    publisher: pubsub_v1.PublisherClient,
    topic: str,
    data: bytes,
    attributes: Mapping[str, str],
    timeout_s: float,
) -> str:
    """Publish one message with `attributes` as a map, wait for the server, return its message id.

    The batching `PublisherClient.publish` takes attributes as keyword arguments beside its own `timeout`,
    `retry` and `ordering_key`; the generated client's publish (its base class) takes them as data.
    """
    message = pubsub_v1.types.PubsubMessage(data=data, attributes=dict(attributes))
    response = GeneratedPublisherClient.publish(
        publisher, topic=topic, messages=[message], timeout=timeout_s, retry=_retried_within(timeout_s)
    )
    return str(response.message_ids[0])


class PubSubDeadLetters:
    """Publishes a message's original data and attributes, plus the bridge's error code and reason."""

    def __init__(self, publisher: pubsub_v1.PublisherClient, topic_path: str) -> None:
        self._publisher = publisher
        self.topic_path = topic_path

    def publish(self, data: bytes, attributes: Mapping[str, str], code: ErrorCode, reason: str) -> None:
        """Publish and wait for the server's message id."""
        body, labels = dead_letter_message(data, attributes, code, reason)
        try:
            publish_message(self._publisher, self.topic_path, body, labels, PUBLISH_TIMEOUT_S)
        except (api.GoogleAPICallError, api.RetryError, TimeoutError) as error:
            raise DeadLetterPublishError(f"cannot publish to {self.topic_path}: {error}") from None


class RequeuePublishError(RetryableError):
    """The job's topic did not take a job published again: a released one stays parked for the next release,
    one carried over is given back as it would have been."""

    retry_cause = RetryCause.PUBSUB


class PubSubRequeue:
    """Publishes a job again to its lane's topic: released (fluxfill.bridge.parking) or carried over
    (fluxfill.bridge.carry_over)."""

    def __init__(self, publisher: pubsub_v1.PublisherClient, topic_paths: Mapping[str, str]) -> None:
        self._publisher = publisher
        self.topic_paths = dict(topic_paths)

    def publish(self, data: bytes, attributes: Mapping[str, str], lane: str) -> None:
        """See Requeue.publish; a lane without a topic of its own (urgent, when no urgent topic is set)
        goes to the bulk topic. The bridge's own attributes are kept whatever else Pub/Sub's limits drop."""
        topic = self.topic_paths.get(lane) or self.topic_paths[BULK_LANE]
        ours = {key: attributes[key] for key in KEPT_ATTRIBUTES if key in attributes}
        try:
            publish_message(
                self._publisher, topic, data, bounded_attributes(attributes, ours), PUBLISH_TIMEOUT_S
            )
        except (api.GoogleAPICallError, api.RetryError, TimeoutError) as error:
            raise RequeuePublishError(f"cannot publish the job again to {topic}: {error}") from None
