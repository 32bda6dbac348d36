"""The pull entry point: streaming pull once Triton is READY, flow control = max concurrent jobs (plus one
waiting job per lane when there is an urgent lane, see fluxfill.bridge.lanes).

The pull starts only when the model is first READY. If Triton goes away later, the streams stay open (closing
them strands the messages they hold until their leases lapse) but every callback waits for readiness before
handling, so no more messages than that flow control are held, their ack deadlines kept alive meanwhile.
"""

import contextlib
import functools
import threading
from typing import Any

import structlog
from google.cloud import pubsub_v1  # type: ignore[attr-defined]

from fluxfill.bridge.bootstrap import Bridge
from fluxfill.bridge.contract import BULK_LANE, URGENT_LANE
from fluxfill.bridge.lanes import SlotGate
from fluxfill.bridge.outcome import Delivery
from fluxfill.bridge.settings import BridgeSettings
from fluxfill.bridge.settle import should_ack

logger = structlog.get_logger(__name__)
# The ack deadline is kept alive this much beyond the job deadline, for the final writes.
LEASE_MARGIN_S = 60.0


def delivery_of(message: Any) -> Delivery:
    """A pulled message as the handler sees it."""
    return Delivery(
        data=bytes(message.data),
        message_id=str(message.message_id),
        attributes=dict(message.attributes),
        publish_time=message.publish_time,
        delivery_attempt=message.delivery_attempt,
    )


class PullRunner:
    """Subscribes only while ready; unsubscribes (in-flight jobs go on) when Triton goes away or on stop.

    With an urgent subscription, two streams feed one SlotGate: a freed slot takes urgent work first.
    """

    def __init__(self, bridge: Bridge) -> None:
        if bridge.subscriber is None:
            raise ValueError("pull mode needs a subscriber client")
        self._bridge = bridge
        self._subscriber = bridge.subscriber
        settings = bridge.settings
        self._lanes = {BULK_LANE: self._subscriber.subscription_path(settings.project, settings.subscription)}
        if settings.urgent_subscription:
            self._lanes[URGENT_LANE] = self._subscriber.subscription_path(
                settings.project, settings.urgent_subscription
            )
        self._gate = SlotGate(settings.max_concurrent_jobs, settings.bulk_share, bridge.metrics.waiting)
        # With two lanes each holds one message more than the slots, waiting at the gate: when a slot frees,
        # both lanes have a job there to choose from (see fluxfill.bridge.lanes).
        held = settings.max_concurrent_jobs + (1 if len(self._lanes) > 1 else 0)
        self._flow = self._flow_control(settings, held)
        self._stop = threading.Event()

    @staticmethod
    def _flow_control(settings: BridgeSettings, max_messages: int) -> Any:
        return pubsub_v1.types.FlowControl(
            max_messages=max_messages,
            max_lease_duration=settings.job_deadline_s + LEASE_MARGIN_S,
            # Short lease extensions bound how long a crashed bridge's messages wait before redelivery
            # (the client's default is up to the 60 s stream ack deadline, or more).
            max_duration_per_lease_extension=settings.lease_extension_s,
        )

    def _on_message(self, lane: str, message: Any) -> None:
        """Never raises: an exception here would end the stream and open another beside it."""
        try:
            acked = self._settle(lane, message)
        except Exception:  # a bug must neither lose the message nor restart the stream
            logger.exception("unexpected error in the pull callback; nacking")
            acked = False
        with contextlib.suppress(Exception):  # a closed stream: the message comes back anyway
            if acked:
                message.ack()
            else:
                message.nack()

    def _settle(self, lane: str, message: Any) -> bool:
        if not self._bridge.readiness.wait_until_ready(self._stop):
            return False
        delivery = delivery_of(message)
        # A job of a user at the limit is parked without waiting for a slot it would not use.
        early = self._bridge.handler.defer_if_user_at_limit(delivery)
        if early is not None:
            return should_ack(early, delivery, self._bridge.dead_letters)
        if not self._gate.acquire(lane, self._stop):
            return False
        try:
            outcome = self._bridge.handler.handle(delivery)
            return should_ack(outcome, delivery, self._bridge.dead_letters)
        finally:
            self._gate.release()

    def _subscribe(self, lane: str) -> Any:
        return self._subscriber.subscribe(
            self._lanes[lane],
            functools.partial(self._on_message, lane),
            flow_control=self._flow,
            await_callbacks_on_shutdown=True,
        )

    def run(self, stop: threading.Event, drained: threading.Event) -> None:
        """Pull until `stop` is set, then close the streams once `drained` says no job is left in flight.

        Closing only after the drain lets the in-flight jobs' acks and nacks go out on live streams.
        """
        self._stop = stop
        if not self._bridge.readiness.wait_until_ready(stop):
            return
        logger.info("pulling", subscriptions=self._lanes)
        futures = {lane: self._subscribe(lane) for lane in self._lanes}
        while not stop.wait(self._bridge.settings.readiness_interval_s):
            for lane, future in futures.items():
                if future.done():
                    # The stream failed for good (the library retries transient errors itself): start anew.
                    logger.error(
                        "streaming pull ended; subscribing again", lane=lane, error=str(future.exception())
                    )
                    future.cancel()  # never two streams at once
                    futures[lane] = self._subscribe(lane)
        drained.wait()
        logger.info("closing the pull")
        for future in futures.values():
            future.cancel()
        for future in futures.values():
            with contextlib.suppress(Exception):  # a stream that had failed: nothing left to drain
                future.result()
