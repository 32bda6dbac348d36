"""End the model's process when a run stops showing signs of life, so that a hung GPU is restarted.

A run stops itself between steps (cancellation, `max_run_seconds`: fluxfill.inpaint.run_control), but a step
that never returns (a hung CUDA kernel, a deadlock in a library) cannot be interrupted from Python, and Triton
2.51 keeps such a model READY while every later request waits behind it. The watchdog is told when a
request starts (model.py watches the whole request: its responses go through the stub's IPC, which can hang
too), at every step and when it ends; when a request has shown nothing for `stall_seconds`, it says so and
ends the process. In the Triton image that is the model's stub, and the image's supervisor
(fluxfill.client.triton_supervisor) then stops Triton so the platform starts a fresh container.
Warm-up is not watched: compiling may legitimately take many minutes before the model is READY.

The check runs on a Python thread, which needs the GIL: a step hung in C code that holds it (a deadlocked
extension) would stop the check too, and the process would hang for ever. So a watchdog that ends the process
also arms a backstop that needs no GIL, faulthandler's timer (a C thread): later than the check would act, so
it fires only when the check could not. It writes every thread's traceback to stderr ("Timeout (h:mm:ss)!",
the hung thread's stack among them) and ends the process with status 1. faulthandler has one timer per
process: one such watchdog per process (a model's stub has one).
"""

import faulthandler
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)

# The status the process ends with (EX_SOFTWARE, as the supervisor's own).
STALLED_EXIT_CODE = 70
# The backstop fires this much (or a quarter of stall_seconds, if more) after stall_seconds, past the check's
# own period (at most 5 s), and is armed again with the signs of life at most every half of it (arming
# starts a thread).
BACKSTOP_MARGIN_S = 10.0


def backstop_margin_s(stall_seconds: float) -> float:
    """How long after `stall_seconds` the GIL-free backstop ends a stalled process at the latest."""
    return max(BACKSTOP_MARGIN_S, stall_seconds / 4)


def end_process(reason: str) -> None:
    """The default on a stall: the reason on stderr and in the log, then the process ends at once (a hung
    thread would keep an orderly exit waiting forever)."""
    logger.error(reason)
    print(f"fluxfill watchdog: {reason}", file=sys.stderr, flush=True)
    os._exit(STALLED_EXIT_CODE)


class StallWatchdog:
    """Watches the runs in progress; `stall_seconds` 0 watches nothing."""

    def __init__(
        self,
        stall_seconds: float,
        on_stall: Callable[[str], None] = end_process,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stall_seconds = stall_seconds
        self._on_stall = on_stall
        self._clock = clock
        self._lock = threading.Lock()
        self._running = 0
        self._last_sign = clock()
        self._what = ""
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # Only a watchdog that ends the process has the backstop (one that only reports must not end it).
        self._backstop = bool(stall_seconds) and on_stall is end_process
        self._backstop_armed_at: float | None = None

    @contextmanager
    def watching(self) -> Iterator[None]:
        """Around one run: the watch starts now and ends with it, however it ends."""
        with self._lock:
            self._running += 1
            self._backstop_armed_at = None  # armed afresh below, whatever its last arming
        self.alive("started")
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                if not self._running:
                    self._disarm_backstop()

    def alive(self, what: str) -> None:
        """A sign of life of a running run (a step finished), and what it was, for the stall's message."""
        with self._lock:
            self._last_sign = self._clock()
            self._what = what
            if self._running:
                self._arm_backstop()

    def stalled(self) -> str | None:
        """Why the runs count as stalled now, or None."""
        with self._lock:
            if not self.stall_seconds or not self._running:
                return None
            quiet = self._clock() - self._last_sign
            if quiet <= self.stall_seconds:
                return None
            return (
                f"a run has shown no progress for {quiet:.0f} s (stall_seconds {self.stall_seconds:g}; last: "
                f"{self._what}): the GPU or a library is hung, and nothing in this process can stop it; "
                "ending the process so that the server is restarted"
            )

    def check(self) -> bool:
        """Act on a stall now; whether there was one."""
        reason = self.stalled()
        if reason is not None:
            self._on_stall(reason)
        return reason is not None

    def start(self) -> None:
        """Check from a daemon thread, a few times per `stall_seconds`, until `stop`."""
        if not self.stall_seconds or self._thread is not None:
            return
        interval = min(5.0, self.stall_seconds / 4)

        def watch() -> None:
            while not self._stop.wait(interval):
                if self.check():
                    return

        self._thread = threading.Thread(target=watch, name="fluxfill-stall-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the checking thread (the model is being unloaded)."""
        with self._lock:
            self._disarm_backstop()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _arm_backstop(self) -> None:
        """(Under the lock.) Fire stall_seconds and the margin from now, unless armed less than half the
        margin ago (then it fires at least stall_seconds and half the margin after this sign)."""
        if not self._backstop:
            return
        margin = backstop_margin_s(self.stall_seconds)
        now = time.monotonic()  # the timer's own clock, whatever clock the checks are given
        if self._backstop_armed_at is not None and now - self._backstop_armed_at < margin / 2:
            return
        try:
            # fd 2 itself: sys.stderr may be a stream without one (a server's log capture).
            faulthandler.dump_traceback_later(self.stall_seconds + margin, exit=True, file=2)
        except (OSError, ValueError, RuntimeError) as error:
            logger.warning("the stall watchdog has no GIL-free backstop: %s", error)
            self._backstop = False
            return
        self._backstop_armed_at = now

    def _disarm_backstop(self) -> None:
        """(Under the lock.)"""
        if self._backstop_armed_at is not None:
            faulthandler.cancel_dump_traceback_later()
            self._backstop_armed_at = None
