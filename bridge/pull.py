"""The pull entry point: unary pulls that ask for exactly the messages a bridge has room for.

Room per subscription is `max_concurrent_jobs` (plus one message waiting at the lane gate when there is an
urgent lane, see fluxfill.bridge.lanes), counting every message pulled and not yet settled. A streaming
pull's flow control is best effort: Pub/Sub may deliver more, and the client then holds the surplus, leased,
while another bridge idles (the emulator ignores it entirely: one stream got 8 of 10 messages under a flow
control of 2, see docs/reliability.md). A unary pull cannot be given more than it asked for.

Nothing is pulled until the model is READY, nor while it is not. Held messages wait for readiness before
their jobs run, their ack deadlines kept alive meanwhile (fluxfill.bridge.leases).
"""

import threading
from typing import Any

import structlog
from google.api_core import exceptions as api

from fluxfill.bridge.bootstrap import Bridge
from fluxfill.bridge.contract import BULK_LANE, URGENT_LANE
from fluxfill.bridge.lanes import SlotGate
from fluxfill.bridge.leases import HeldMessage, Leases
from fluxfill.bridge.monitor import hung_after_s
from fluxfill.bridge.outcome import Delivery
from fluxfill.bridge.settings import BridgeSettings
from fluxfill.bridge.settle import should_ack

logger = structlog.get_logger(__name__)
# How long one pull waits for messages when there are none (Pub/Sub answers as soon as there are).
PULL_WAIT_S = 10.0
# A failing pull is tried again after this, doubling up to the maximum.
PULL_BACKOFF_S = 0.5
PULL_BACKOFF_MAX_S = 10.0
# After the drain, how long the messages that never ran may take to be nacked.
SETTLE_WAIT_S = 1.0


def message_lease_s(settings: BridgeSettings) -> float:
    """How long a held message is kept, from its job's start (and before it, while it waits): until another
    bridge could take the job over from a hung run here (its monitor's bound, then its claim's lease). Less,
    and a job still running legitimately (a long wait for its uploads, a run near its deadline) would have its
    message delivered again meanwhile, each copy spending a delivery attempt that the dead-letter policy
    counts."""
    return hung_after_s(settings.job_deadline_s, settings.upload_grace_s) + settings.lease_s


def delivery_of(received: Any) -> Delivery:
    """A pulled message (a ReceivedMessage) as the handler sees it."""
    message = received.message
    return Delivery(
        data=bytes(message.data),
        message_id=str(message.message_id),
        attributes=dict(message.attributes),
        publish_time=message.publish_time,
        # 0 when the subscription has no dead-letter policy: the count is unknown then.
        delivery_attempt=received.delivery_attempt or None,
    )


class PullRunner:
    """Pulls while ready and until stopped; with an urgent subscription, both lanes feed one SlotGate."""

    def __init__(self, bridge: Bridge) -> None:
        if bridge.subscriber is None or bridge.pull_subscriber is None:
            raise ValueError("pull mode needs two subscriber clients")
        self._bridge = bridge
        self._subscriber = bridge.subscriber
        self._puller = bridge.pull_subscriber
        settings = bridge.settings
        self._lanes = {BULK_LANE: self._subscriber.subscription_path(settings.project, settings.subscription)}
        if settings.urgent_subscription:
            self._lanes[URGENT_LANE] = self._subscriber.subscription_path(
                settings.project, settings.urgent_subscription
            )
        self._gate = SlotGate(settings.max_concurrent_jobs, settings.bulk_share, bridge.metrics.waiting)
        # With two lanes each holds one message more than the slots, waiting at the gate: when a slot frees,
        # both lanes have a job there to choose from (see fluxfill.bridge.lanes).
        self._allowance = settings.max_concurrent_jobs + (1 if len(self._lanes) > 1 else 0)
        self._leases = Leases(self._subscriber, settings.lease_extension_s, message_lease_s(settings))
        self._stop = threading.Event()

    def _on_message(self, lane: str, received: Any, held: HeldMessage) -> None:
        """Never raises: a bug must not lose the message."""
        try:
            acked, retry_after_s = self._settle(lane, received, held)
        except Exception:
            logger.exception("unexpected error handling a pulled message; nacking")
            acked, retry_after_s = False, 0
        if acked:
            self._leases.ack(held)
        else:
            self._leases.nack(held, retry_after_s)

    def _settle(self, lane: str, received: Any, held: HeldMessage) -> tuple[bool, int]:
        """Whether to ack; if not, after how long the message is wanted back."""
        delivery = delivery_of(received)
        if not self._bridge.readiness.wait_until_ready(self._stop):
            return self._stopping(delivery), 0
        # A job of a user at the limit is parked without waiting for a slot it would not use.
        outcome = self._bridge.handler.defer_if_user_at_limit(delivery)
        if outcome is None:
            if not self._gate.acquire(lane, self._stop):
                return self._stopping(delivery), 0
            self._leases.started(held)
            try:
                outcome = self._bridge.handler.handle(delivery)
            finally:
                self._gate.release()
        acked = should_ack(outcome, delivery, self._bridge.dead_letters, self._bridge.carry_over)
        return acked, outcome.retry_after_s

    def _stopping(self, delivery: Delivery) -> bool:
        """Whether a message the bridge stops before running was carried over (ack) or is given back."""
        carry_over = self._bridge.carry_over
        return carry_over is not None and carry_over.instead_of_giving_back(delivery, "stopping")

    def _pull_lane(self, lane: str) -> None:
        subscription = self._lanes[lane]
        backoff = PULL_BACKOFF_S
        while self._bridge.readiness.wait_until_ready(self._stop):
            room = self._leases.wait_for_room(subscription, self._allowance, self._stop)
            if room == 0:
                return
            try:
                response = self._puller.pull(
                    request={"subscription": subscription, "max_messages": room},
                    timeout=PULL_WAIT_S,
                    retry=None,
                )
            except api.DeadlineExceeded:
                continue  # nothing to pull
            except Exception as error:  # Pub/Sub away, or the channel closed on stop
                if self._stop.is_set():
                    return
                self._bridge.metrics.pull_errors.labels(lane).inc()
                logger.warning("pull failed; trying again", lane=lane, error=str(error), in_s=backoff)
                self._stop.wait(backoff)
                backoff = min(2 * backoff, PULL_BACKOFF_MAX_S)
                continue
            backoff = PULL_BACKOFF_S
            self._dispatch(lane, subscription, list(response.received_messages))

    def _dispatch(self, lane: str, subscription: str, received: list[Any]) -> None:
        if not received:
            return
        held_messages = self._leases.hold(subscription, [message.ack_id for message in received])
        for message, held in zip(received, held_messages, strict=True):
            # Daemon threads: a job hung past the shutdown's cleanup must not keep the process alive (its
            # lease then lapses and the message comes back).
            try:
                threading.Thread(
                    target=self._on_message, args=(lane, message, held), name=f"job-{lane}", daemon=True
                ).start()
            except RuntimeError:  # no thread to be had: given back, not held until its lease ends
                logger.exception("could not start a job thread; nacking")
                self._leases.nack(held)

    def run(self, stop: threading.Event, drained: threading.Event) -> None:
        """Pull until `stop` is set; keep the held messages alive until `drained` says no job is left.

        Messages held but not yet running when `stop` is set are nacked by their threads at once.
        """
        self._stop = stop
        if not self._bridge.readiness.wait_until_ready(stop):
            return
        logger.info("pulling", subscriptions=self._lanes, room=self._allowance)
        kept_alive = threading.Event()
        vital = self._bridge.vital
        vital.start("leases", self._leases.keep_alive, kept_alive)
        pullers = [vital.start(f"pull-{lane}", self._pull_lane, lane) for lane in self._lanes]
        stop.wait()
        # Closing the pulling channel ends the pulls in flight; what a pull brought meanwhile is nacked.
        self._puller.close()
        for puller in pullers:
            puller.join(timeout=PULL_WAIT_S)
        drained.wait()
        # The last nacks (messages that never ran) go out before the process may exit; a job hung past the
        # drain is not waited for: its lease lapses.
        if not self._leases.wait_until_settled(SETTLE_WAIT_S):
            logger.warning("leaving messages held; they come back when their leases lapse")
        kept_alive.set()
        logger.info("pull closed")
