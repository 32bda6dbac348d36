"""The Triton adapter on a real tritonserver, by protocol: what it sends besides the photo (an urgent job's
priority), how it stops a run (a cancel reaches the server over gRPC), and what a deadline means (a run that
never started is Triton's fault, not the job's). The bridge's own tests run it over the stream only."""

import math
import threading
import time

import pytest

from fluxfill.bridge.adapters.triton import TritonInpaintModel
from fluxfill.bridge.errors import (
    BridgeError,
    JobCancelledError,
    JobDeadlineExceededError,
    TritonUnavailableError,
)
from fluxfill.bridge.ports import InferenceRequest, InferenceResult, RunControl
from fluxfill.client.local_server import LocalTritonServer
from tests.integration.bridge.harness import box_mask, photo, wait_until
from tests.integration.server_metrics import outcome_count, server_metric, wait_until_settled

pytestmark = pytest.mark.integration
PROTOCOLS = ("grpc-stream", "grpc", "http")
LONG_RUN = 60  # steps: about 2.5 s on the slow server, whatever the photo's size (it works at 1024x1024)


class Run(threading.Thread):
    """One `infer` in a thread of its own, and how it ended."""

    def __init__(
        self, model: TritonInpaintModel, steps: int, *, urgent: bool = False, deadline_s: float = 120
    ):
        super().__init__(daemon=True)
        self.model = model
        self.request = InferenceRequest(
            photo(64, 64), box_mask(64, 64), "a cat", seed=3, steps=steps, urgent=urgent
        )
        self.control = RunControl(deadline=time.monotonic() + deadline_s)
        self.result: InferenceResult | None = None
        self.error: BridgeError | None = None
        self.ended_at = 0.0
        self.stepped = threading.Event()  # its progress came back (the stream's only)
        self.start()

    def _on_progress(self, step: int, _total: int) -> None:
        if step >= 1:
            self.stepped.set()

    def run(self) -> None:
        try:
            self.result = self.model.infer(self.request, on_progress=self._on_progress, control=self.control)
        except BridgeError as error:
            self.error = error
        self.ended_at = time.monotonic()

    def ended(self, timeout_s: float = 120) -> "Run":
        self.join(timeout_s)
        assert not self.is_alive(), "the run never ended"
        return self


def url_for(server: LocalTritonServer, protocol: str) -> str:
    return server.http_url if protocol == "http" else server.grpc_url


def running_blocker(server: LocalTritonServer, model: TritonInpaintModel) -> Run:
    """A long run, seen stepping on the server (so that what comes next waits in the model's queue). The
    server is left to settle first: a step of another test's run still going there was taken for this one's
    (in CI, a stream then reached its deadline "before Triton reported its first step")."""
    wait_until_settled(server)
    steps_before = server_metric(server, "fluxfill_step_duration_seconds_count")
    blocker = Run(model, LONG_RUN)
    if model.protocol == "grpc-stream":
        assert blocker.stepped.wait(30), "the run never stepped"
    else:
        wait_until(lambda: server_metric(server, "fluxfill_step_duration_seconds_count") > steps_before)
    return blocker


def queued(server: LocalTritonServer, model: TritonInpaintModel) -> float:
    return server_metric(server, "nv_inference_pending_request_count", model=model.name)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_urgent_job_overtakes_a_bulk_one_waiting_on_triton(
    slow_flux_server: LocalTritonServer, protocol: str
) -> None:
    """The bridge's lanes order what it takes; once jobs wait on Triton, only the request's priority orders
    them: an urgent job sent as bulk waited behind every bulk job queued there before it."""
    model = TritonInpaintModel(url_for(slow_flux_server, protocol), protocol)
    blocker = running_blocker(slow_flux_server, model)
    bulk = Run(model, 1)
    wait_until(lambda: queued(slow_flux_server, model) == 1)
    urgent = Run(model, 1, urgent=True)
    wait_until(lambda: queued(slow_flux_server, model) == 2)
    blocker.control.cancel.set()  # the queue is what counts (over HTTP the run goes on to its end)
    assert isinstance(blocker.ended().error, JobCancelledError), blocker.error
    for run in (bulk.ended(), urgent.ended()):
        assert run.error is None, run.error
    assert urgent.ended_at < bulk.ended_at


@pytest.mark.parametrize("protocol", ["grpc-stream", "grpc"])
def test_a_cancelled_run_stops_on_the_server_within_steps(
    slow_flux_server: LocalTritonServer, protocol: str
) -> None:
    model = TritonInpaintModel(url_for(slow_flux_server, protocol), protocol)
    cancelled_before = settled_cancelled_runs(slow_flux_server)
    run = running_blocker(slow_flux_server, model)
    run.control.cancel.set()
    assert isinstance(run.ended(timeout_s=10).error, JobCancelledError), run.error
    wait_until_stopped_on_the_server(slow_flux_server, cancelled_before)


def settled_cancelled_runs(server: LocalTritonServer) -> float:
    """The count a test's own cancel is measured from: read before every earlier run was answered, an
    earlier test's cancel counted late made it two in CI (and would have let a lost cancel pass)."""
    wait_until_settled(server)
    return outcome_count(server, "cancelled")


def wait_until_stopped_on_the_server(server: LocalTritonServer, cancelled_before: float) -> None:
    """Counted cancelled once the model stops it: a run left going would be counted a success later."""
    wait_until_settled(server, timeout_s=10)
    assert outcome_count(server, "cancelled") == cancelled_before + 1


def test_over_http_a_cancel_ends_the_wait_though_the_run_goes_on(slow_flux_server: LocalTritonServer) -> None:
    """HTTP cannot cancel: the job is told cancelled at once, the server runs on to its TIMEOUT_S."""
    model = TritonInpaintModel(slow_flux_server.http_url, "http")
    run = running_blocker(slow_flux_server, model)
    cancelled_at = time.monotonic()
    run.control.cancel.set()
    assert isinstance(run.ended(timeout_s=10).error, JobCancelledError), run.error
    assert run.ended_at - cancelled_at < 1.0
    wait_until_settled(slow_flux_server)


def test_a_streamed_run_still_queued_at_its_deadline_is_tritons_fault_not_the_jobs(
    slow_flux_server: LocalTritonServer,
) -> None:
    """It never ran: failing the job as timed out would blame a photo for a busy server."""
    model = TritonInpaintModel(slow_flux_server.grpc_url)
    blocker = running_blocker(slow_flux_server, model)
    waiting = Run(model, 1, deadline_s=1.0).ended(timeout_s=10)
    assert isinstance(waiting.error, TritonUnavailableError), waiting.error
    assert "before Triton reported its first step" in str(waiting.error)
    assert blocker.is_alive(), "the run ahead went on"
    blocker.control.cancel.set()
    assert isinstance(blocker.ended().error, JobCancelledError), blocker.error


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_run_past_its_deadline_while_running_is_the_jobs_deadline_and_stops_over_grpc(
    slow_flux_server: LocalTritonServer, protocol: str
) -> None:
    model = TritonInpaintModel(url_for(slow_flux_server, protocol), protocol)
    cancelled_before = settled_cancelled_runs(slow_flux_server)
    run = running_blocker(slow_flux_server, model)
    run.control.deadline = time.monotonic() + 0.2  # reached while it runs, whatever the machine's speed
    assert isinstance(run.ended(timeout_s=10).error, JobDeadlineExceededError), run.error
    assert "while Triton was running" in str(run.error)
    if protocol == "http":  # no cancel: the run ends on the server at its TIMEOUT_S, or done
        wait_until_settled(slow_flux_server)
    else:
        wait_until_stopped_on_the_server(slow_flux_server, cancelled_before)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_run_without_a_deadline_is_sent_the_longest_time_limit_the_model_takes(
    flux_server: LocalTritonServer, protocol: str
) -> None:
    """The deadline goes to the model as TIMEOUT_S, which it refuses above a day: a caller with no deadline
    (the benchmarks) had every run refused as bad input."""
    run = Run(TritonInpaintModel(url_for(flux_server, protocol), protocol), 1, deadline_s=math.inf)
    assert run.ended().error is None, run.error
    assert run.result is not None
    assert run.result.image.shape == run.request.image.shape
