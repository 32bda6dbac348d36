"""Whether Triton serves the model READY: polled in the background, dropped at once on an error."""

import threading
import time
from collections.abc import Callable

import structlog

from fluxfill.bridge.metrics import BridgeMetrics
from fluxfill.bridge.ports import InpaintModel

logger = structlog.get_logger(__name__)
# How soon a waiter notices the stop event, whatever the readiness interval.
STOP_CHECK_S = 0.2
# While the model is not ready, the reason is logged again this often: a bridge aimed at a wrong Triton URL
# said "bridge started" and then nothing, for good.
UNREADY_REMINDER_S = 60.0


class Readiness:
    """The bridge takes work only while `ready`; `stopping` (SIGTERM) makes it unready for good."""

    def __init__(
        self,
        model: InpaintModel,
        interval_s: float,
        metrics: BridgeMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._model = model
        self._interval_s = interval_s
        self._metrics = metrics
        self._clock = clock
        # Before the first answer the bridge takes no work either, but has not said why.
        self._known = False
        self._unready_since = clock()
        self._reminded_at = clock()
        self._ready = threading.Event()
        self.stopping = threading.Event()
        self._changed = threading.Condition()
        # Every "unready" (a check's answer or a failed call's mark) is counted with its reason: a run asks
        # afterwards whether Triton went away while it ran, even when Triton was back before the run's end.
        self._times_seen_unready = 0
        self._last_unready_reason = ""

    @property
    def ready(self) -> bool:
        """True while the model is READY and the bridge is not shutting down."""
        return self._ready.is_set() and not self.stopping.is_set()

    def check(self) -> bool:
        """Ask Triton now and record the answer."""
        ready = self._model.is_ready()
        reason = (
            "model READY" if ready else f"model {self._model.name} not ready: {self._model.unready_reason()}"
        )
        self._set(ready, reason)
        return self.ready

    def mark_unready(self, reason: str) -> None:
        """Stop taking work at once (a Triton call failed as unavailable) until a check says READY."""
        self._set(False, reason)

    def mark(self) -> int:
        """A mark to pass to `unavailable_since` later."""
        with self._changed:
            return self._times_seen_unready

    def unavailable_since(self, mark: int) -> str | None:
        """Why Triton was unready at some moment since `mark` (or is now); None when it was ready throughout.

        The bridge's own stop does not count: it says nothing about Triton.
        """
        with self._changed:
            if self._times_seen_unready != mark or not self._ready.is_set():
                return self._last_unready_reason or "the model was not ready"
            return None

    def _set(self, ready: bool, reason: str) -> None:
        with self._changed:
            if ready != self._ready.is_set() or not self._known:
                # No work is taken while unready: a WARNING, with the reason (the first answer's too).
                (logger.info if ready else logger.warning)("readiness changed", ready=ready, reason=reason)
                now = self._clock()
                self._unready_since = self._reminded_at = now
            self._known = True
            if ready:
                self._ready.set()
            else:
                self._ready.clear()
                self._times_seen_unready += 1
                self._last_unready_reason = reason
            self._metrics.ready.set(1 if ready else 0)
            self._changed.notify_all()

    def wait_until_ready(self, stop: threading.Event, timeout_s: float | None = None) -> bool:
        """Block until ready (True), or `stop` is set (False, noticed within STOP_CHECK_S), or `timeout_s`
        has passed (False)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        # The check and the wait hold the condition's lock together: a change made between them (and its
        # notify) cannot be missed, which once left a puller asleep for a whole readiness interval.
        with self._changed:
            while not stop.is_set():
                if self.ready:
                    return True
                # `stop` is an Event, not this condition: wake now and then to see it.
                left = min(self._interval_s, STOP_CHECK_S)
                if deadline is not None:
                    left = min(left, deadline - time.monotonic())
                    if left <= 0:
                        return False
                self._changed.wait(timeout=left)
        return False

    def poll(self, stop: threading.Event) -> None:
        """Ask Triton every interval until `stop` is set (on a thread of its own: fluxfill.bridge.vital)."""
        while not stop.is_set():
            self.check()
            self._remind_while_unready()
            stop.wait(self._interval_s)

    def _remind_while_unready(self) -> None:
        """The reason again once per UNREADY_REMINDER_S while the model stays unready (not while stopping)."""
        with self._changed:
            now = self._clock()
            if self._ready.is_set() or self.stopping.is_set() or now - self._reminded_at < UNREADY_REMINDER_S:
                return
            self._reminded_at = now
            logger.warning(
                "still taking no work: the model is not ready",
                reason=self._last_unready_reason,
                for_s=round(now - self._unready_since),
            )
