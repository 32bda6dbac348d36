"""A job whose session document does not exist: the app deleted the session while the job was queued (or
running), or never made it (a fabricated message). The bridge runs nothing and writes nothing, so a session
the app deleted stays deleted; within `upload_grace_s` of the job's publication the document may only be late,
and the job is looked for again."""

import copy
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fluxfill.bridge import sessions, unclaimed
from fluxfill.bridge.contract import FIRST_PUBLISHED_ATTRIBUTE, ErrorCode
from fluxfill.bridge.outcome import Delivery, Outcome, OutcomeKind
from tests.unit.bridge.world import DOCUMENT, PREFIX, SESSION, USER, World, queued_session


def changed_while_running(world: World, change: Callable[[], object], **job: Any) -> Outcome:
    """The outcome of a 40-step job (`job`: the delivery's fields) whose session the app changed (`change`,
    under the store's lock) once the run reported progress."""
    world.model.step_s = 0.05
    outcomes: list[Outcome] = []
    running = threading.Thread(target=lambda: outcomes.append(world.deliver(steps=40, **job)))
    running.start()
    deadline = time.monotonic() + 10
    while not world.sessions.progress_writes:
        assert time.monotonic() < deadline, "the job never reported progress"
        time.sleep(0.01)
    with world.sessions._lock:
        change()
    running.join(timeout=10)
    assert not running.is_alive(), "the run went on without its session"
    return outcomes[0]


def deleted_while_running(world: World) -> Outcome:
    """The outcome of a 40-step job whose session document the app deleted once the run reported progress."""
    return changed_while_running(world, lambda: world.sessions.documents.pop(DOCUMENT))


def orphaned_jobs(world: World) -> float:
    return world.metrics.sample("fluxfill_bridge_jobs_total", {"outcome": "orphaned"})


@pytest.mark.parametrize("uploads_kept", [True, False], ids=["uploads kept", "uploads deleted too"])
def test_a_job_whose_session_the_app_deleted_runs_nothing_and_writes_nothing(uploads_kept: bool) -> None:
    world = World(upload_grace_s=30.0)
    del world.sessions.documents[DOCUMENT]
    if not uploads_kept:
        world.objects.objects.clear()
    uploaded = dict(world.objects.objects)
    # Within the grace it may be a document not written yet: looked for again later, holding nothing.
    looked_again = world.deliver(published_s_ago=29.0)
    assert looked_again.kind is OutcomeKind.RETRY
    assert "does not exist yet" in looked_again.reason
    assert looked_again.retry_after_s == 1, "wanted back no later than its grace's end"
    outcome = world.deliver(published_s_ago=31.0)
    assert outcome.kind is OutcomeKind.ORPHANED
    assert "session document does not exist" in outcome.reason
    assert "not made within 30 s of the job's publication" in outcome.reason
    assert world.acked == [False, True], "acked once the grace is over: a redelivery would find the same"
    assert world.sessions.documents == {}, "the session is not made again"
    assert world.model.calls == []
    assert world.objects.finds == [], "no upload looked for, none waited for"
    assert world.objects.objects == uploaded, "nothing uploaded"
    assert world.dead_letters.published == []
    assert orphaned_jobs(world) == 1
    assert world.sessions.running(USER) == 0, "no slot of the user's taken"


def test_a_job_published_before_its_session_document_was_written_runs_once_the_document_is_there() -> None:
    """An app's write queued offline by its SDK, then a function called to publish: the job comes first."""
    world = World(upload_grace_s=30.0)
    document = world.sessions.documents.pop(DOCUMENT)
    first = world.deliver(published_s_ago=0.5)
    assert first.kind is OutcomeKind.RETRY
    assert first.retry_after_s == unclaimed.SESSION_RECHECK_S
    assert world.sessions.documents == {}, "nothing written to the missing document"
    world.sessions.documents[DOCUMENT] = document
    assert world.deliver(published_s_ago=6.0).kind is OutcomeKind.DONE
    assert world.document["status"] == "done"
    assert len(world.model.calls) == 1
    assert world.acked == [False, True]


@pytest.mark.parametrize("grace_s", [0.0, 30.0])
def test_a_missing_session_document_is_not_waited_for_without_a_grace_or_a_known_publication(
    grace_s: float,
) -> None:
    """No grace: orphaned at once. No publication time: no grace can be counted (every redelivery would find
    the whole of it left), so orphaned at once too."""
    world = World(upload_grace_s=grace_s)
    del world.sessions.documents[DOCUMENT]
    data = b'{"userId": "%s", "sessionId": "%s"}' % (USER.encode(), SESSION.encode())
    unknown = world.handler.handle(Delivery(data, "m1", publish_time=None))
    assert unknown.kind is OutcomeKind.ORPHANED
    assert world.deliver().kind is (OutcomeKind.ORPHANED if grace_s == 0 else OutcomeKind.RETRY)
    assert world.sessions.documents == {}


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
    # Its redelivery finds no session: acked once the grace is over, nothing run.
    assert world.deliver(message_id="m1", published_s_ago=31.0).kind is OutcomeKind.ORPHANED
    assert len(world.model.calls) == 1
    assert world.sessions.documents == {}


def test_a_users_next_job_runs_at_once_after_the_app_deleted_their_running_session() -> None:
    """The deleted run's slot of its user's is freed when its run stops, not left to lapse with its lease."""
    world = World(max_jobs_in_flight_per_user=1, topic="jobs", lease_s=600.0)
    world.upload(USER, "s2")
    deleted_while_running(world)
    assert world.sessions.running(USER) == 0, "the stopped run's slot is free"
    assert world.deliver(sessionId="s2", message_id="m2").kind is OutcomeKind.DONE


def made_again(world: World, made_s_ago: float = 0.0, **fields: Any) -> dict[str, Any]:
    """The app deleted the session and made it again under its id `made_s_ago` (a new document, created then);
    its fields as made."""
    document = {**queued_session(), "prompt": "a blue hat", **fields}
    world.sessions.documents[DOCUMENT] = document
    world.sessions.made[DOCUMENT] = datetime.now(UTC) - timedelta(seconds=made_s_ago)
    return copy.deepcopy(document)


def test_the_job_of_a_deleted_session_does_not_run_on_the_session_made_again_under_its_id() -> None:
    """The app deletes a session whose job is still queued and makes it again under the same id with a new
    prompt: the old message, still in Pub/Sub, claimed the new document and ran the new photo with its own
    old prompt, seed and steps, and the new session's own message then found it ended (a duplicate)."""
    world = World(upload_grace_s=30.0)
    made = made_again(world)
    old = world.deliver(message_id="old", published_s_ago=45.0, prompt="a red hat")
    assert old.kind is OutcomeKind.ORPHANED, old.reason
    assert "made 45 s after the job was first published" in old.reason
    assert "later than the 30 s an app's document may follow its job" in old.reason
    assert world.document == made, "nothing written to the new session"
    assert world.model.calls == []
    assert world.acked == [True], "acked: no delivery of it can be for this document"
    assert orphaned_jobs(world) == 1
    new = world.deliver(message_id="new", prompt="a blue hat")
    assert new.kind is OutcomeKind.DONE, new.reason
    assert [call.prompt for call in world.model.calls] == ["a blue hat"]
    assert world.document["attempt"] == 1


@pytest.mark.parametrize(
    "fields",
    [
        {"cancelRequested": True},
        {"status": "done"},
        {"attempt": 3, "status": "failed"},
        {"attempt": 3},
    ],
    ids=["cancel requested", "done", "failed", "attempts spent"],
)
def test_the_job_of_a_deleted_session_decides_nothing_about_the_session_made_again(
    fields: dict[str, Any],
) -> None:
    """Its status, cancel request and attempts are another job's: no cancel written for it, no dead letter
    sent, no failure recorded."""
    world = World(upload_grace_s=30.0)
    made = made_again(world, **fields)
    outcome = world.deliver(message_id="old", published_s_ago=60.0)
    assert outcome.kind is OutcomeKind.ORPHANED, outcome.reason
    assert world.document == made
    assert world.dead_letters.published == []


@pytest.mark.parametrize("published_before_made_s", [-60.0, 0.0, 29.0, 31.0])
def test_a_session_document_made_within_the_grace_after_its_job_was_published_is_the_jobs_own(
    published_before_made_s: float,
) -> None:
    """An app that publishes before its document is written (within `upload_grace_s`, and a margin for two
    services' clocks): the document made after the publication is the job's; so is one made before it."""
    world = World(upload_grace_s=30.0)
    made_again(world, made_s_ago=100.0)
    outcome = world.deliver(published_s_ago=100.0 + published_before_made_s)
    assert outcome.kind is OutcomeKind.DONE, outcome.reason
    assert len(world.model.calls) == 1


def test_a_parked_or_carried_jobs_first_publication_decides_whose_session_it_is() -> None:
    """A job published again by a bridge (parked, carried over) is the same job: its message is new, and the
    attribute it carries says when the job was first published."""
    world = World(upload_grace_s=30.0)
    made = made_again(world)
    first = (datetime.now(UTC) - timedelta(seconds=90)).isoformat()
    outcome = world.deliver(attributes={FIRST_PUBLISHED_ATTRIBUTE: first})
    assert outcome.kind is OutcomeKind.ORPHANED, outcome.reason
    assert world.document == made


def test_a_job_whose_publication_is_not_known_is_taken_as_its_sessions() -> None:
    world = World(upload_grace_s=30.0)
    made_again(world)
    data = b'{"userId": "%s", "sessionId": "%s"}' % (USER.encode(), SESSION.encode())
    outcome = world.handler.handle(Delivery(data, "m1", publish_time=None))
    assert outcome.kind is OutcomeKind.DONE, outcome.reason


def test_a_remade_session_takes_no_slot_of_its_users() -> None:
    world = World(upload_grace_s=30.0, max_jobs_in_flight_per_user=1, topic="jobs")
    made_again(world)
    assert world.deliver(message_id="old", published_s_ago=60.0).kind is OutcomeKind.ORPHANED
    assert world.sessions.running(USER) == 0
    assert world.parking_lot.parked == {}
    assert world.deliver(message_id="new").kind is OutcomeKind.DONE, "the user's slot was free"


def test_a_session_deleted_and_made_again_while_its_job_runs_is_left_to_its_own_job() -> None:
    """The run stops at its next lease renewal (the new document holds no claim of its), its redelivery is
    refused as made after it, and the new session's own job runs it."""
    world = World(upload_grace_s=30.0)
    world.sessions.made[DOCUMENT] = datetime.now(UTC) - timedelta(seconds=60)
    made: list[dict[str, Any]] = []
    stopped = changed_while_running(
        world, lambda: made.append(made_again(world)), message_id="old", published_s_ago=40.0
    )
    assert stopped.kind is OutcomeKind.RETRY, stopped.reason
    assert [world.document] == made
    again = world.deliver(message_id="old", published_s_ago=41.0, steps=40)
    assert again.kind is OutcomeKind.ORPHANED, again.reason
    assert [world.document] == made
    assert world.deliver(message_id="new", steps=2).kind is OutcomeKind.DONE
    assert world.document["attempt"] == 1


def test_the_latest_time_a_jobs_session_can_have_been_made() -> None:
    published = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    assert sessions.latest_made(None, 30.0) is None
    margin = timedelta(seconds=30 + sessions.CLOCKS_APART_S)
    assert sessions.latest_made(published, 30.0) == published + margin
    assert sessions.remade(published + timedelta(seconds=1), published) is not None
    assert sessions.remade(published, published) is None, "made at the latest moment: its own"
    assert sessions.remade(None, published) is None
    assert sessions.remade(published, None) is None


def test_a_job_whose_session_document_names_another_job_runs_nothing_on_it() -> None:
    """Made again within the grace, a session cannot be told from its deleted one by time; an app that gives
    each job an id (`jobId` in the message and in the document) has them told apart at once."""
    world = World(upload_grace_s=30.0)
    made = made_again(world, jobId="job-2")
    old = world.deliver(message_id="old", jobId="job-1", prompt="a red hat")
    assert old.kind is OutcomeKind.ORPHANED, old.reason
    assert "names another job (jobId 'job-2'; this job's is 'job-1')" in old.reason
    assert world.document == made
    assert world.model.calls == []
    new = world.deliver(message_id="new", jobId="job-2", prompt="a blue hat")
    assert new.kind is OutcomeKind.DONE, new.reason
    assert [call.prompt for call in world.model.calls] == ["a blue hat"]


@pytest.mark.parametrize(
    ("named", "job_id"),
    [(None, "job-1"), ("job-1", None), (7, "job-1")],
    ids=["document names none", "message names none", "document's not an id"],
)
def test_a_job_id_is_checked_only_where_both_name_one(named: object, job_id: str | None) -> None:
    world = World()
    if named is not None:
        world.document["jobId"] = named
    job = {"jobId": job_id} if job_id is not None else {}
    assert world.deliver(**job).kind is OutcomeKind.DONE


def test_a_job_id_the_contract_refuses_is_an_invalid_job() -> None:
    world = World()
    outcome = world.deliver(jobId="../job")
    assert (outcome.kind, outcome.code) == (OutcomeKind.DEAD_LETTER, ErrorCode.INVALID_JOB)
    assert "jobId" in outcome.reason
