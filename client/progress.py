"""The `fluxfill infer` progress bar on stderr: redrawn in place on a terminal, else a line per step."""

import time
from typing import TextIO


class ProgressBar:
    """A `(step, total)` callback that draws the run's progress."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self._stream = stream
        self._width = width
        self._interactive = stream.isatty()
        self._started = time.monotonic()
        self.steps_seen: list[int] = []

    def __call__(self, step: int, total: int) -> None:
        self.steps_seen.append(step)
        elapsed = time.monotonic() - self._started
        if self._interactive:
            filled = self._width * step // max(total, 1)
            bar = "#" * filled + "." * (self._width - filled)
            end = "\n" if step >= total else ""
            self._stream.write(f"\r[{bar}] step {step}/{total}  {elapsed:.1f} s{end}")
        else:
            # Logs and pipes get whole lines, which a reader (or a test) can count.
            self._stream.write(f"step {step}/{total}  {elapsed:.1f} s\n")
        self._stream.flush()

    def interrupt(self) -> None:
        """End a half-drawn bar so the next message starts on its own line."""
        if self._interactive and self.steps_seen:
            self._stream.write("\n")
            self._stream.flush()
