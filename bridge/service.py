"""Run a bridge: readiness polling, the HTTP server, the pull loop, and a graceful stop on SIGTERM."""

import threading
import time

import structlog
import uvicorn

from fluxfill.bridge.bootstrap import Bridge
from fluxfill.bridge.http_app import HttpEntryPoint
from fluxfill.bridge.pull import PullRunner
from fluxfill.bridge.settings import SHUTDOWN_CLEANUP_S

logger = structlog.get_logger(__name__)
_POLL_S = 0.05


class BridgeService:
    """One bridge process's life: `run()` blocks until `request_stop()` (on SIGTERM) and the drain."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self._stop = threading.Event()
        self._poll_stop = threading.Event()
        self.http = HttpEntryPoint(bridge)
        settings = bridge.settings
        config = uvicorn.Config(
            self.http.app, host=settings.http_host, port=settings.http_port, log_config=None, access_log=False
        )
        self._server = uvicorn.Server(config)
        self._server_thread = threading.Thread(target=self._server.run, name="http", daemon=True)
        self.started = threading.Event()

    @property
    def http_port(self) -> int:
        """The port actually bound (settings may say 0)."""
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    def request_stop(self) -> None:
        """Stop taking work (/readyz and /push answer 503, the pull pauses); in-flight jobs get the grace."""
        self.bridge.readiness.stopping.set()
        self._stop.set()

    def _in_flight(self) -> float:
        return self.bridge.metrics.sample("fluxfill_bridge_jobs_in_flight")

    def run(self) -> None:
        """Serve until stopped, then drain within `shutdown_grace_s`; cancel and nack what is left."""
        settings = self.bridge.settings
        vital = self.bridge.vital
        vital.start("readiness", self.bridge.readiness.poll, self._poll_stop)
        self._server_thread.start()
        while not self._server.started and self._server_thread.is_alive():
            time.sleep(_POLL_S)
        puller = None
        drained = threading.Event()
        if self.bridge.parking is not None:
            vital.start("parking-sweep", self._sweep)
        if self.bridge.cancel_sweep is not None:
            vital.start("cancel-sweep", self._sweep_cancels)
        if settings.mode == "pull":
            runner = PullRunner(self.bridge)
            puller = vital.start("pull", runner.run, self._stop, drained, daemon=False)
        logger.info(
            "bridge started", mode=settings.mode, http_port=self.http_port, instance=settings.instance_id
        )
        self.started.set()
        self._stop.wait()
        logger.info("stopping: no new work", grace_s=settings.shutdown_grace_s, in_flight=self._in_flight())
        self._drain(time.monotonic() + settings.shutdown_grace_s)
        drained.set()
        if puller is not None:
            puller.join()
        self._poll_stop.set()
        self._server.should_exit = True
        self._server_thread.join(timeout=10)
        logger.info("bridge stopped")

    def _sweep(self) -> None:
        """Release, now and then, the parked jobs of users with free slots (fluxfill.bridge.parking)."""
        assert self.bridge.parking is not None
        while not self._stop.wait(self.bridge.settings.parking_sweep_s):
            self.bridge.parking.sweep()

    def _sweep_cancels(self) -> None:
        """End, now and then, the queued jobs their app cancelled (fluxfill.bridge.cancel_sweep)."""
        assert self.bridge.cancel_sweep is not None
        while not self._stop.wait(self.bridge.settings.cancel_sweep_s):
            self.bridge.cancel_sweep.sweep()

    def _drain(self, deadline: float) -> None:
        while self._in_flight() > 0 and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        if self._in_flight() > 0:
            logger.warning(
                "grace period over: cancelling in-flight jobs on Triton", in_flight=self._in_flight()
            )
            self.bridge.handler.hard_stop.set()
        # Bounded: a hung dependency must not carry the process into the platform's SIGKILL mid-write.
        cleanup_deadline = time.monotonic() + SHUTDOWN_CLEANUP_S
        while self._in_flight() > 0 and time.monotonic() < cleanup_deadline:
            time.sleep(_POLL_S)
        if self._in_flight() > 0:
            logger.error(
                "exiting with jobs still in flight; their leases will lapse", in_flight=self._in_flight()
            )
