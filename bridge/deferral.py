"""What a waiting job's message carries when it is published again, and the hint that a user is at the limit.

A job whose user is at the per-user limit is parked (fluxfill.bridge.parking) and published again when a slot
of the user's frees: a new message, whose attributes say when the job was first published (its queue time
counts from then) and how often it was parked. A new message and not a nack: Pub/Sub counts every delivery
toward the subscription's dead-letter policy, and a nacked message comes back either at once (a tight loop)
or after the retry policy's growing backoff, while GPUs idle.
"""

import threading
import time
from datetime import UTC, datetime

from fluxfill.bridge.contract import DEFERRALS_ATTRIBUTE, FIRST_PUBLISHED_ATTRIBUTE
from fluxfill.bridge.outcome import Delivery

# A user found at the limit is taken as still there for this long without asking Firestore again: a flood
# of one user's jobs then costs a couple of reads a second per bridge, not one per message.
AT_LIMIT_HINT_S = 0.5


def first_published(delivery: Delivery) -> datetime | None:
    """When the job was first published: a released job's message says so in an attribute; else its publish
    time.

    The attribute is trusted only to move the time back (a copy is published after the original), and
    only when it reads as a time; anything else is ignored.
    """
    published = delivery.publish_time
    stated = delivery.attributes.get(FIRST_PUBLISHED_ATTRIBUTE)
    if not stated:
        return published
    try:
        moment = datetime.fromisoformat(stated)
    except ValueError:
        return published
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment if published is None or moment <= published else published


def deferral_attributes(delivery: Delivery) -> dict[str, str]:
    """What a parked job's message carries beside the original's attributes when published again: its first
    publish time, the deferral (parking) count plus one."""
    return republished_attributes(delivery, DEFERRALS_ATTRIBUTE)


def republished_attributes(delivery: Delivery, counter: str) -> dict[str, str]:
    """What a job's message published again by a bridge carries beside the original's attributes: its first
    publish time, and the `counter` attribute (how often it was so published; unreadable counts as none)
    plus one."""
    try:
        count = max(int(delivery.attributes.get(counter, "0")), 0)
    except ValueError:
        count = 0
    ours = {counter: str(count + 1)}
    first = first_published(delivery)
    if first is not None:
        ours[FIRST_PUBLISHED_ATTRIBUTE] = first.isoformat()
    return ours


class AtLimitHint:
    """Users this bridge found at their limit moments ago; forgotten when one of their jobs ends here."""

    def __init__(self, hold_s: float | None = None) -> None:
        self._hold_s = AT_LIMIT_HINT_S if hold_s is None else hold_s
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def note(self, user: str) -> None:
        with self._lock:
            self._until[user] = time.monotonic() + self._hold_s

    def forget(self, user: str) -> None:
        with self._lock:
            self._until.pop(user, None)

    def at_limit(self, user: str) -> bool:
        now = time.monotonic()
        with self._lock:
            # Expired entries go as they are met, so the map holds only users seen within the hold.
            for stale in [name for name, until in self._until.items() if until <= now]:
                del self._until[stale]
            return user in self._until
