"""A job whose session document does not exist: the app deleted the session while the job was queued (or
running), or never made it (a fabricated message). The bridge runs nothing and writes nothing, so a session
the app deleted stays deleted."""

import threading
import time

import pytest

from fluxfill.bridge.contract import ErrorCode
from fluxfill.bridge.outcome import Outcome, OutcomeKind
from tests.unit.bridge.world import DOCUMENT, PREFIX, USER, World


def deleted_while_running(world: World) -> Outcome:
    """The outcome of a 40-step job whose session document the app deleted once the run reported progress."""
    world.model.step_s = 0.05
    outcomes: list[Outcome] = []
    running = threading.Thread(target=lambda: outcomes.append(world.deliver(steps=40)))
    running.start()
    deadline = time.monotonic() + 10
    while not world.sessions.progress_writes:
        assert time.monotonic() < deadline, "the job never reported progress"
        time.sleep(0.01)
    with world.sessions._lock:
        del world.sessions.documents[DOCUMENT]
    running.join(timeout=10)
    assert not running.is_alive(), "the run went on without its session"
    return outcomes[0]


def orphaned_jobs(world: World) -> float:
    return world.metrics.sample("fluxfill_bridge_jobs_total", {"outcome": "orphaned"})


@pytest.mark.parametrize("uploads_kept", [True, False], ids=["uploads kept", "uploads deleted too"])
def test_a_job_whose_session_the_app_deleted_runs_nothing_and_writes_nothing(uploads_kept: bool) -> None:
    world = World(upload_grace_s=30.0)
    del world.sessions.documents[DOCUMENT]
    if not uploads_kept:
        world.objects.objects.clear()
    uploaded = dict(world.objects.objects)
    outcome = world.deliver()
    assert outcome.kind is OutcomeKind.ORPHANED
    assert "session document does not exist" in outcome.reason
    assert world.acked == [True], "acked: a redelivery would find the same"
    assert world.sessions.documents == {}, "the session is not made again"
    assert world.model.calls == []
    assert world.objects.finds == [], "no upload looked for, none waited for"
    assert world.objects.objects == uploaded, "nothing uploaded"
    assert world.dead_letters.published == []
    assert orphaned_jobs(world) == 1


def test_an_invalid_job_of_a_session_that_does_not_exist_is_dead_lettered_and_writes_nothing() -> None:
    world = World()
    del world.sessions.documents[DOCUMENT]
    outcome = world.deliver(steps="many")
    assert (outcome.kind, outcome.code) == (OutcomeKind.DEAD_LETTER, ErrorCode.INVALID_JOB)
    assert len(world.dead_letters.published) == 1
    assert world.sessions.documents == {}


def test_a_session_deleted_while_its_job_runs_stops_the_run_and_stays_deleted() -> None:
    world = World()
    outcome = deleted_while_running(world)
    assert outcome.kind is OutcomeKind.RETRY, outcome.reason
    assert world.sessions.documents == {}
    assert not any(path.startswith(f"{PREFIX}/edited") for path in world.objects.objects)
    # Its redelivery finds no session: acked, nothing run.
    assert world.deliver(message_id="m1").kind is OutcomeKind.ORPHANED
    assert len(world.model.calls) == 1
    assert world.sessions.documents == {}


def test_a_users_next_job_runs_at_once_after_the_app_deleted_their_running_session() -> None:
    """The deleted run's slot of its user's is freed when its run stops, not left to lapse with its lease."""
    world = World(max_jobs_in_flight_per_user=1, topic="jobs", lease_s=600.0)
    world.upload(USER, "s2")
    deleted_while_running(world)
    assert world.sessions.running(USER) == 0, "the stopped run's slot is free"
    assert world.deliver(sessionId="s2", message_id="m2").kind is OutcomeKind.DONE
