"""A job the bridge would give back to Pub/Sub on its last deliveries is published anew instead.

Pub/Sub dead-letters a message after the subscription's `max_delivery_attempts` deliveries, and counts every
nack, 503 and 429 alike, whatever its cause. A bridge gives a job back for causes that say nothing of the job:
the model not ready for longer than a push may wait for it (a reload, an outage), no slot free, Firestore
unreachable, the bridge stopping for a deploy. As first deployed (10 attempts, retries 10 s doubling to 600 s)
an outage of about 40 minutes had Pub/Sub dead-letter valid jobs unclaimed, their sessions left `queued` until
someone replays them. The bridge counts a job's own failed runs itself (claims, `max_delivery_attempts`), so
the subscription's count need only stop a message that crashes the bridge every time, or meets a bug: those
are never carried over, and still reach the dead-letter topic through Pub/Sub.

A carried-over message is the job's data with its attributes, published to its lane's topic, before the old
one is acked (a failed publish leaves the old one to be given back as asked): its delivery count starts
afresh. It names the message the job was first delivered as (ORIGINAL_MESSAGE_ID_ATTRIBUTE), under which its
claims hold the job: the copy of a message whose run is still going is that run's message, not a duplicate to
drop, and it brings the job back should that run die. Its queue time counts from the first publish.
"""

import structlog

from fluxfill.bridge.contract import CARRIED_OVER_ATTRIBUTE, ORIGINAL_MESSAGE_ID_ATTRIBUTE
from fluxfill.bridge.deferral import republished_attributes
from fluxfill.bridge.errors import RetryableError
from fluxfill.bridge.lanes import lane_of
from fluxfill.bridge.metrics import BridgeMetrics
from fluxfill.bridge.outcome import Delivery
from fluxfill.bridge.ports import Requeue

logger = structlog.get_logger(__name__)
# Carried over on the last this many deliveries the subscription allows, not only the very last: Pub/Sub
# computes a message's delivery attempt "at best effort" and calls it approximate.
LAST_DELIVERIES = 2


class CarryOver:
    """Publishes a job anew in place of giving it back on one of its subscription's last deliveries."""

    def __init__(self, requeue: Requeue, subscription_max_attempts: int, metrics: BridgeMetrics) -> None:
        self._requeue = requeue
        self._from_attempt = subscription_max_attempts - LAST_DELIVERIES + 1
        self._metrics = metrics

    def due(self, delivery: Delivery) -> bool:
        """Whether giving this delivery back could have Pub/Sub dead-letter it (its attempt is known only on
        a subscription with a dead-letter policy)."""
        attempt = delivery.delivery_attempt
        return attempt is not None and attempt >= self._from_attempt

    def instead_of_giving_back(self, delivery: Delivery, why: str) -> bool:
        """True when the job was published anew (ack this delivery); False to give it back as meant."""
        if not self.due(delivery):
            return False
        try:
            self._requeue.publish(delivery.data, carried_attributes(delivery), lane_of(delivery.data))
        except RetryableError as error:
            logger.error("could not carry the job over; giving it back", error=str(error), why=why)
            return False
        self._metrics.carried_over.labels(why).inc()
        logger.warning(
            "carried the job over to a new message on its last deliveries",
            messageId=delivery.message_id,
            delivery_attempt=delivery.delivery_attempt,
            why=why,
        )
        return True


def carried_attributes(delivery: Delivery) -> dict[str, str]:
    """The carried-over message's attributes: the delivery's, with the original message id, the first
    publish time and the carry-over count."""
    return {
        **delivery.attributes,
        ORIGINAL_MESSAGE_ID_ATTRIBUTE: delivery.original_message_id,
        **republished_attributes(delivery, CARRIED_OVER_ATTRIBUTE),
    }
