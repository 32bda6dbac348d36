"""Per-step control of one run: report progress, then stop on cancellation or deadline."""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fluxfill.inpaint.errors import CancelledError, DeadlineExceededError

ProgressSink = Callable[[int, int], None]


def never_cancelled() -> bool:
    """The default cancellation check: nothing ever asks the run to stop."""
    return False


@dataclass
class StepGuard:
    """The engine's step callback: progress out, cancellation and time limit checked after every step."""

    time_limit_s: float | None = None
    is_cancelled: Callable[[], bool] = never_cancelled
    on_progress: ProgressSink | None = None
    # Step timings are exported as they happen, so a long run is visible while it runs.
    on_step_seconds: Callable[[float], None] | None = None
    # A sign of life for the stall watchdog (fluxfill.inpaint.watchdog), with what it was.
    on_alive: Callable[[str], None] | None = None
    started: float = field(default_factory=time.monotonic)
    step_durations: list[float] = field(default_factory=list)
    _last_step_at: float | None = None

    def check(self, step: int, total: int) -> None:
        """Raise if the run must stop now (also called before the first step)."""
        if self.is_cancelled():
            raise CancelledError(f"cancelled by the caller after step {step} of {total}")
        elapsed = time.monotonic() - self.started
        if self.time_limit_s is not None and elapsed > self.time_limit_s:
            limit = f"{elapsed:.1f} s exceeds the limit of {self.time_limit_s:g} s"
            raise DeadlineExceededError(f"stopped after step {step} of {total}: {limit}")

    def __call__(self, step: int, total: int) -> None:
        """Step 0 comes just before denoising starts; step k after step k of `total` finished."""
        now = time.monotonic()
        if step > 0 and self._last_step_at is not None:
            self.step_durations.append(now - self._last_step_at)
            if self.on_step_seconds is not None:
                self.on_step_seconds(now - self._last_step_at)
        self._last_step_at = now
        if self.on_alive is not None:
            self.on_alive(f"step {step} of {total}")
        if step > 0 and self.on_progress is not None:
            self.on_progress(step, total)
        self.check(step, total)
