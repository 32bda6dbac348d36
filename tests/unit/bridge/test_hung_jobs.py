"""A job whose thread hangs in a call that never returns: its claim lapses and another bridge finishes it;
the hung bridge's /healthz fails so that the platform restarts it. Without this the heartbeats went on and
the session stayed `processing` for ever."""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from starlette.testclient import TestClient

from fluxfill.bridge import monitor as monitor_module
from fluxfill.bridge.http_app import HttpEntryPoint
from fluxfill.bridge.outcome import Outcome, OutcomeKind
from fluxfill.bridge.ports import InferenceRequest, InferenceResult, ProgressCallback, RunControl
from fluxfill.bridge.pull import message_lease_s
from fluxfill.bridge.vital import VitalThreads
from tests.unit.bridge.fakes import FakeModel
from tests.unit.bridge.world import World, settings


@dataclass
class FirstCallHangs(FakeModel):
    """The first call never returns until released, whatever it is told (a wedged socket, a deadlock)."""

    release: threading.Event = field(default_factory=threading.Event)
    hung: threading.Event = field(default_factory=threading.Event)

    def infer(
        self, request: InferenceRequest, *, on_progress: ProgressCallback, control: RunControl
    ) -> InferenceResult:
        if not self.hung.is_set():
            self.hung.set()
            on_progress(1, 4)
            self.release.wait(60)
        return super().infer(request, on_progress=on_progress, control=control)


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_hung_jobs_claim_lapses_another_bridge_finishes_it_and_healthz_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(monitor_module, "JOB_OVERRUN_S", 0.5)
    # A hung job is one older than its deadline, its upload grace (none here) and the margin.
    quick = {"job_deadline_s": 0.5, "lease_s": 1.0, "upload_grace_s": 0.0}
    world = World(**quick)
    world.model = model = FirstCallHangs()
    world.handler = world.another_bridge(instance_id="bridge-a", **quick)
    bridge = SimpleNamespace(handler=world.handler, settings=world.settings, vital=VitalThreads())
    health = TestClient(HttpEntryPoint(bridge).app)
    outcomes: list[Outcome] = []
    hung = threading.Thread(target=lambda: outcomes.append(world.deliver()))
    hung.start()
    try:
        wait_for(model.hung.is_set)
        assert health.get("/healthz").status_code == 200, "running, not yet past its deadline and margin"
        wait_for(lambda: world.handler.overdue_jobs() == ["m1"])
        answer = health.get("/healthz")
        assert answer.status_code == 503
        assert "hang past the deadline: m1" in answer.text
        assert "fluxfill_bridge_jobs_overdue 1.0" in world.metrics.exposition().decode()
        # Heartbeats stopped: the claim lapses, and the next delivery, to another bridge, takes the job over.
        time.sleep(1.2)
        other = world.another_bridge(instance_id="bridge-b")
        assert world.deliver(handler=other).kind is OutcomeKind.DONE
        assert world.document["status"] == "done"
        assert world.document["owner"] == "bridge-b"
    finally:
        model.release.set()
        hung.join(30)
    # The hung thread, released at last, writes nothing over the other bridge's result.
    assert outcomes[0].kind is OutcomeKind.RETRY
    assert world.document["status"] == "done"
    assert world.document["owner"] == "bridge-b"
    assert world.handler.overdue_jobs() == []
    assert health.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "overrides", [{}, {"upload_grace_s": 600.0}, {"lease_s": 300.0}, {"job_deadline_s": 5.0, "lease_s": 1.0}]
)
def test_a_pulled_message_is_kept_as_long_as_its_job_may_run_and_its_claim_hold(
    overrides: dict[str, float],
) -> None:
    # Kept less, a job still running here (a long wait for its uploads, a run near its deadline) has its
    # message delivered again meanwhile, each copy spending a delivery attempt the dead-letter policy counts.
    chosen = settings(**overrides)
    legitimate = chosen.job_deadline_s + chosen.upload_grace_s + monitor_module.JOB_OVERRUN_S
    assert monitor_module.hung_after_s(chosen.job_deadline_s, chosen.upload_grace_s) >= legitimate
    assert message_lease_s(chosen) >= legitimate + chosen.lease_s


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the bug, told
def test_a_bridge_whose_own_thread_died_of_a_bug_fails_healthz() -> None:
    """The thread is gone, the process is not: with its pull thread dead a bridge pulled nothing while its
    health check answered ok, for as long as it ran."""
    world = World()
    vital = VitalThreads()
    health = TestClient(
        HttpEntryPoint(SimpleNamespace(handler=world.handler, settings=world.settings, vital=vital)).app
    )
    go_on = threading.Event()
    running = vital.start("leases", go_on.wait)
    assert health.get("/healthz").status_code == 200

    def pull(lane: str) -> None:
        raise KeyError(lane)

    vital.start("pull-bulk", pull, "bulk").join(10)

    answer = health.get("/healthz")
    assert (answer.status_code, answer.text) == (
        503,
        "a thread of the bridge died: pull-bulk (KeyError: 'bulk')",
    )
    go_on.set()
    running.join(10)
    assert vital.deaths() == ["pull-bulk (KeyError: 'bulk')"], "a thread that ends by returning is no death"
