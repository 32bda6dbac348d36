"""The ack deadlines of the messages a bridge has pulled and not yet settled.

A pulled message comes back to another bridge unless its ack deadline is extended. Each held message is
extended to `lease_extension_s` at once and then every third of that, until it is settled or its maximum
lease has passed: a bridge that stops (SIGKILL, SIGSTOP, a hung process) stops extending, and its messages
come back within one `lease_extension_s`. The maximum lease counts from the pull while the message waits
(for Triton, for a slot), and again from its job's start: a wait must not eat the job's own time, or the
message would come back to another bridge while its job still runs here.
"""

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

import structlog

logger = structlog.get_logger(__name__)
# Acks, nacks and extensions are small calls; a stalled one must not hold a job's thread for long.
CALL_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class HeldMessage:
    subscription: str
    ack_id: str
    lease_ends: float  # time.monotonic() after which it is no longer extended (see Leases.started)


class Leases:
    """Held messages, kept alive from a thread of their own; ack and nack through the same client."""

    def __init__(self, subscriber: Any, extension_s: int, max_lease_s: float) -> None:
        self._subscriber = subscriber
        self._extension_s = extension_s
        self._max_lease_s = max_lease_s
        self._held: dict[str, HeldMessage] = {}
        self._changed = threading.Condition()

    def hold(self, subscription: str, ack_ids: list[str]) -> list[HeldMessage]:
        """Just pulled: extended at once (the subscription's own deadline may be shorter than ours)."""
        lease_ends = time.monotonic() + self._max_lease_s
        held = [HeldMessage(subscription, ack_id, lease_ends) for ack_id in ack_ids]
        with self._changed:
            self._held.update((message.ack_id, message) for message in held)
        self._extend(subscription, ack_ids)
        return held

    def started(self, message: HeldMessage) -> None:
        """Its job has begun: the maximum lease counts afresh from now."""
        with self._changed:
            if message.ack_id in self._held:
                self._held[message.ack_id] = replace(message, lease_ends=time.monotonic() + self._max_lease_s)

    def wait_until_settled(self, timeout_s: float) -> bool:
        """Block until no message is held (True) or `timeout_s` passed (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._held, timeout=timeout_s)

    def wait_for_room(self, subscription: str, allowance: int, stop: threading.Event) -> int:
        """Block until fewer than `allowance` messages of `subscription` are held; the room (0 on stop)."""
        with self._changed:
            while not stop.is_set():
                room = allowance - sum(1 for held in self._held.values() if held.subscription == subscription)
                if room > 0:
                    return room
                self._changed.wait(timeout=0.2)
            return 0

    def ack(self, message: HeldMessage) -> None:
        self._forget(message)
        self._call(self._subscriber.acknowledge, subscription=message.subscription, ack_ids=[message.ack_id])

    def nack(self, message: HeldMessage, after_s: int = 0) -> None:
        """Redelivered after `after_s` seconds (its ack deadline set to that; 0 = at once)."""
        self._forget(message)
        self._modify(message.subscription, [message.ack_id], after_s)

    def keep_alive(self, stop: threading.Event) -> None:
        """Extend every held message until `stop`; the messages past their maximum lease are let go."""
        while not stop.wait(self._extension_s / 3):
            now = time.monotonic()
            due: dict[str, list[str]] = defaultdict(list)
            with self._changed:
                for message in list(self._held.values()):
                    if message.lease_ends <= now:
                        logger.warning("lease given up past its maximum", subscription=message.subscription)
                        del self._held[message.ack_id]
                        self._changed.notify_all()
                    else:
                        due[message.subscription].append(message.ack_id)
            for subscription, ack_ids in due.items():
                self._extend(subscription, ack_ids)

    def _forget(self, message: HeldMessage) -> None:
        with self._changed:
            self._held.pop(message.ack_id, None)
            self._changed.notify_all()

    def _extend(self, subscription: str, ack_ids: list[str]) -> None:
        self._modify(subscription, ack_ids, self._extension_s)

    def _modify(self, subscription: str, ack_ids: list[str], deadline_s: int) -> None:
        self._call(
            self._subscriber.modify_ack_deadline,
            subscription=subscription,
            ack_ids=ack_ids,
            ack_deadline_seconds=deadline_s,
        )

    @staticmethod
    def _call(method: Any, **request: Any) -> None:
        # Logged, never raised: an ack or extension that did not arrive means a redelivery, which the claim
        # makes harmless (the job runs once). A closed channel raises ValueError, hence the breadth.
        try:
            method(request=request, timeout=CALL_TIMEOUT_S)
        except Exception as error:
            logger.warning("ack deadline call failed", call=method.__name__, error=str(error))
