"""The stall watchdog: a run with no sign of life for stall_seconds ends the process; idle time never does."""

import re
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from fluxfill.inpaint.contract import contract_arrays
from fluxfill.inpaint.engine import InpaintEngine, PreviewCallback, StepCallback
from fluxfill.inpaint.geometry import BoolArray, UInt8Array
from fluxfill.inpaint.offload import OffloadDecision
from fluxfill.inpaint.pipeline import LoadReport
from fluxfill.inpaint.service import FluxFillService
from fluxfill.inpaint.watchdog import STALLED_EXIT_CODE, StallWatchdog
from tests.support import make_config


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_only_a_running_run_that_is_quiet_past_the_limit_is_stalled() -> None:
    clock, stalls = Clock(), list[str]()
    watchdog = StallWatchdog(60, on_stall=stalls.append, clock=clock)
    clock.now += 3600
    assert not watchdog.check(), "idle between runs is not a stall"
    with watchdog.watching():
        clock.now += 59
        watchdog.alive("step 3 of 28")
        clock.now += 60
        assert not watchdog.check(), "a sign of life restarts the count"
        clock.now += 1.5
        assert watchdog.check()
    clock.now += 3600
    assert not watchdog.check(), "the run ended: nothing is watched"
    (reason,) = stalls
    assert "no progress for 62 s" in reason
    assert "last: step 3 of 28" in reason


def test_zero_watches_nothing() -> None:
    clock = Clock()
    watchdog = StallWatchdog(0, on_stall=lambda _: None, clock=clock)
    with watchdog.watching():
        clock.now += 10**6
        assert watchdog.stalled() is None
    watchdog.start()
    assert watchdog._thread is None


@dataclass
class HangingDenoiser:
    """Reports its first step, then hangs in the second (a GPU kernel that never returns) until released."""

    release: threading.Event = field(default_factory=threading.Event)

    def denoise(
        self,
        image: UInt8Array,
        mask: BoolArray,
        *,
        prompt: str,
        steps: int,
        guidance: float,
        seed: int,
        on_step: StepCallback | None,
        on_preview: PreviewCallback | None = None,
    ) -> UInt8Array:
        assert on_step is not None
        on_step(1, steps)
        self.release.wait(30)
        return image.copy()


def test_a_step_that_never_returns_is_caught_from_the_service() -> None:
    """The service's runs are watched with the steps as signs of life (the model starts the thread)."""
    config = make_config(stall_seconds="0.3")
    denoiser = HangingDenoiser()
    report = LoadReport("cpu", "float32", OffloadDecision("none", "no GPU"), 123, False)
    service = FluxFillService(InpaintEngine(denoiser, config), config, report)
    assert service.watchdog.stall_seconds == 0.3
    stalls: list[str] = []
    service.watchdog = StallWatchdog(config.stall_seconds, on_stall=stalls.append)
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 8:40] = 255
    inputs = contract_arrays(np.zeros((64, 64, 3), np.uint8), mask, "", steps=3)
    service.watchdog.start()
    runner = threading.Thread(target=service.run, args=(inputs,))
    runner.start()
    deadline = time.monotonic() + 20
    while not stalls and time.monotonic() < deadline:
        time.sleep(0.05)
    denoiser.release.set()
    runner.join(30)
    service.watchdog.stop()
    assert stalls, "the hung step was never noticed"
    assert "last: step 1 of 3" in stalls[0]


def test_the_shipped_limit_is_no_shorter_than_a_whole_run() -> None:
    """A run stops itself at max_run_seconds between steps: a quiet that long is no step at all."""
    config = make_config()
    assert config.stall_seconds >= config.max_run_seconds


def test_a_stall_ends_the_process_with_its_reason() -> None:
    """The default action: a hung thread cannot be joined, so the process ends at once, saying why."""
    script = textwrap.dedent(
        """
        import time
        from fluxfill.inpaint.watchdog import StallWatchdog
        watchdog = StallWatchdog(0.2)
        watchdog.start()
        with watchdog.watching():
            time.sleep(30)
        """
    )
    started = time.monotonic()
    ended = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert ended.returncode == STALLED_EXIT_CODE
    assert "fluxfill watchdog: a run has shown no progress" in ended.stderr
    assert time.monotonic() - started < 20


def run_script(body: str, timeout_s: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    """`body` in a fresh interpreter (a model's stub, as far as the watchdog knows), and how long it took."""
    started = time.monotonic()
    ended = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    return ended, time.monotonic() - started


# A watchdog with a 1 s backstop margin, and libc's sleep called through ctypes.PyDLL, which keeps the GIL the
# whole time: a step hung in C code that holds it.
QUICK_BACKSTOP = """
import ctypes, time
hold_the_gil = ctypes.PyDLL(None).usleep
from fluxfill.inpaint import watchdog as module
module.BACKSTOP_MARGIN_S = 1.0
watchdog = module.StallWatchdog({stall_seconds})
watchdog.start()
"""


def test_a_step_hung_holding_the_gil_still_ends_the_process() -> None:
    """The checking thread cannot run then; the GIL-free backstop ends the process, every thread's stack on
    stderr. Without it the process slept the whole minute (and would hang for ever on a real deadlock)."""
    ended, took = run_script(
        QUICK_BACKSTOP.format(stall_seconds=0.2)
        + """
with watchdog.watching():
    watchdog.alive("step 1 of 3")
    hold_the_gil(60_000_000)
""",
        timeout_s=30,
    )
    assert ended.returncode == 1, ended.stderr
    assert "Timeout (0:00:01.2" in ended.stderr  # stall_seconds and the margin
    assert re.search(r'File "<string>", line \d+ in <module>', ended.stderr), "the hung thread is shown"
    assert took < 20


def test_the_backstop_spares_a_run_that_shows_signs_of_life_and_the_idle_time_after_it() -> None:
    ended, _ = run_script(
        QUICK_BACKSTOP.format(stall_seconds=0.5)
        + """
with watchdog.watching():
    started = time.monotonic()
    while time.monotonic() - started < 4:  # slow steps holding the GIL, past the backstop's time
        hold_the_gil(200_000)
        watchdog.alive("a step")
hold_the_gil(3_000_000)  # idle, past the backstop's time again
watchdog.stop()
print("survived")
"""
    )
    assert ended.returncode == 0, ended.stderr
    assert ended.stdout.strip() == "survived"
