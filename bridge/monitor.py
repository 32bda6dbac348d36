"""Watch a running job: renew its lease, write progress at most once per interval, notice a cancel."""

import threading
import time
from types import TracebackType

import structlog

from fluxfill.bridge.errors import RetryableError
from fluxfill.bridge.ports import JobRef, RunControl, SessionStore

logger = structlog.get_logger(__name__)
# How often the watcher wakes to notice the bridge's hard stop between heartbeats.
_WAKE_S = 0.05


class JobMonitor:
    """A thread per running job; the run is stopped through `control.cancel` when it must end early."""

    def __init__(
        self,
        sessions: SessionStore,
        job: JobRef,
        owner: str,
        *,
        lease_s: float,
        interval_s: float,
        control: RunControl,
        hard_stop: threading.Event,
    ) -> None:
        self._sessions = sessions
        self._job = job
        self._owner = owner
        self._lease_s = lease_s
        self._interval_s = interval_s
        self._control = control
        self._hard_stop = hard_stop
        self._finished = threading.Event()
        self._lock = threading.Lock()
        self._progress: tuple[int, int] | None = None
        self._written: tuple[int, int] | None = None
        self.cancel_requested = False  # by the app, through the session document
        self.lease_lost = False
        self.shutdown = False
        self.steps_seen: list[tuple[int, int]] = []
        self._thread = threading.Thread(target=self._watch, name=f"monitor-{job.message_id}", daemon=True)

    def report_progress(self, step: int, total: int) -> None:
        """Called by the model adapter per step; written by the watcher thread, throttled."""
        with self._lock:
            self._progress = (step, total)
            self.steps_seen.append((step, total))

    def _watch(self) -> None:
        next_beat = time.monotonic() + self._interval_s
        while not self._finished.wait(_WAKE_S):
            if self._hard_stop.is_set() and not self.shutdown:
                self.shutdown = True
                self._control.cancel.set()
            if time.monotonic() >= next_beat:
                self._beat()
                next_beat = time.monotonic() + self._interval_s

    def _beat(self) -> None:
        with self._lock:
            progress = self._progress if self._progress != self._written else None
        try:
            beat = self._sessions.heartbeat(self._job, self._owner, self._lease_s, progress)
        except RetryableError as error:
            # A missed heartbeat only shortens the lease margin; the next one tries again.
            logger.warning("heartbeat failed", error=str(error))
            return
        if progress is not None:
            self._written = progress
        if beat.cancel_requested and not self.cancel_requested:
            logger.info("cancel requested by the app")
            self.cancel_requested = True
            self._control.cancel.set()
        if not beat.still_owner and not self.lease_lost:
            logger.warning("lease lost to another bridge; stopping the run")
            self.lease_lost = True
            self._control.cancel.set()

    def __enter__(self) -> "JobMonitor":
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._finished.set()
        self._thread.join()
