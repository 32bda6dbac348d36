"""The bridge's own long-lived threads (its readiness poll, its pull, its lanes, its lease keeper, its parking
sweep), and whether one of them died.

A thread that ends with an exception nobody caught (a bug) is logged (fluxfill.bridge.logs), and the process
goes on without it: with its pull thread dead a bridge pulled nothing while /healthz answered ok, for as long
as it ran; with its lease keeper dead every message it held came back to another bridge mid-job; with its
readiness poll dead, a Triton once seen unavailable was never seen ready again. Started here, such a death is
remembered, and /healthz fails with its name, so that the platform restarts the bridge.
"""

import threading
from collections.abc import Callable

# How much of an exception's text a death keeps (it is told whole in the log).
_SAID_CHARS = 200


class VitalThreads:
    """Starts the threads the bridge cannot do without, and keeps what ended any of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deaths: list[str] = []

    def start(
        self, name: str, target: Callable[..., object], *args: object, daemon: bool = True
    ) -> threading.Thread:
        """Start `target(*args)` on a thread named `name`; an exception that ends it is a death."""

        def run() -> None:
            try:
                target(*args)
            except BaseException as error:
                with self._lock:
                    self._deaths.append(f"{name} ({type(error).__name__}: {error})"[:_SAID_CHARS])
                raise  # told by the thread hook, as every uncaught exception is

        thread = threading.Thread(target=run, name=name, daemon=daemon)
        thread.start()
        return thread

    def deaths(self) -> list[str]:
        """The threads that ended with an exception, and what ended them."""
        with self._lock:
            return list(self._deaths)
