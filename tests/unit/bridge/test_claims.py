"""Exactly one outcome: claims fenced by a claim id, stalled owners that stop, attempt limits that hold."""

import io
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fluxfill.bridge import sessions
from fluxfill.bridge.contract import ErrorCode, JobStatus
from fluxfill.bridge.errors import (
    RetryCause,
    SessionRefusedError,
    SessionTransientError,
    StorageTransientError,
    TritonUnavailableError,
)
from fluxfill.bridge.outcome import OutcomeKind
from fluxfill.bridge.ports import Claim, ClaimKind, Heartbeat
from fluxfill.bridge.settings import BridgeSettings
from tests.unit.bridge.fakes import png
from tests.unit.bridge.test_handler import phone_jpeg
from tests.unit.bridge.test_intake import encode, exif_with_a_one_byte_resolution
from tests.unit.bridge.world import DOCUMENT, PREFIX, World, photo, queued_session

EDITED, PREVIEW = f"{PREFIX}/edited.png", f"{PREFIX}/preview.jpg"


def run_in_background(world: World, **job: object) -> tuple[threading.Thread, list[object]]:
    outcomes: list[object] = []
    thread = threading.Thread(target=lambda: outcomes.append(world.deliver(**job)))  # type: ignore[arg-type]
    thread.start()
    return thread, outcomes


def wait_for_steps(world: World, count: int = 1) -> None:
    deadline = time.monotonic() + 10
    while len(world.model.calls) < count or world.document.get("status") != "processing":
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.01)


def test_bridges_sharing_one_name_never_run_a_job_twice() -> None:
    """Cloud Run names every instance `localhost`: a second delivery is not claimed while the first runs."""
    world = World(instance_id="localhost")
    world.model.step_s = 0.02
    twin = world.another_bridge(instance_id="localhost")
    thread, outcomes = run_in_background(world, steps=30, message_id="m1")
    wait_for_steps(world)
    republished = world.deliver(handler=twin, steps=30, message_id="m2")
    redelivered = world.deliver(handler=twin, steps=30, message_id="m1")
    thread.join()
    assert republished.kind is OutcomeKind.DUPLICATE, "another message of a running job is not needed"
    assert redelivered.kind is OutcomeKind.RETRY, "the running message itself must come back if the run dies"
    assert len(world.model.calls) == 1
    assert outcomes[0].kind is OutcomeKind.DONE  # type: ignore[attr-defined]
    assert world.document["attempt"] == 1
    assert world.document["status"] == "done"


def claims_made(world: World) -> list[Claim]:
    """Every claim the world's handler makes from now on, as the session store answered it."""
    claims: list[Claim] = []
    original_claim = world.sessions.claim

    def recording_claim(*args: Any, **kwargs: Any) -> Claim:
        claims.append(original_claim(*args, **kwargs))
        return claims[-1]

    world.sessions.claim = recording_claim  # type: ignore[method-assign]
    return claims


def test_every_claim_gets_its_own_fencing_token() -> None:
    world = World(instance_id="localhost")
    world.model.fail_with = TritonUnavailableError("connection refused")
    world.deliver()
    first = world.sessions.documents[f"{PREFIX}"].get("claimId")
    assert first is None, "a released claim leaves no token behind"
    claims = claims_made(world)
    world.deliver()
    world.model.fail_with = None
    world.deliver()
    tokens = [claim.claim_id for claim in claims]
    assert len(set(tokens)) == 2
    assert all(len(token) >= 32 for token in tokens)


def test_the_results_carry_the_sessions_first_claims_id_which_every_later_claim_keeps() -> None:
    world = World()
    world.model.fail_with = TritonUnavailableError("connection refused")
    claims = claims_made(world)
    world.deliver()
    world.model.fail_with = None
    assert world.deliver().kind is OutcomeKind.DONE
    first, second = claims
    assert first.claim_id != second.claim_id
    assert first.result_key == second.result_key == first.claim_id == world.document["resultKey"]
    assert world.objects.result_keys == {EDITED: first.claim_id, PREVIEW: first.claim_id}


def test_default_instance_id_is_unique_per_process_even_with_one_hostname() -> None:
    first = BridgeSettings(project="p", subscription="s", bucket="b")
    second = BridgeSettings(project="p", subscription="s", bucket="b")
    assert first.instance_id != second.instance_id
    assert len(first.instance_id) > len("localhost")


def test_run_stops_and_writes_nothing_when_heartbeats_fail_past_the_bound() -> None:
    world = World(lease_s=0.4, progress_interval_s=0.02)
    world.model.step_s = 0.02
    thread, outcomes = run_in_background(world, steps=100)
    wait_for_steps(world)
    world.sessions.heartbeat_fails_with = SessionTransientError("firestore unavailable")
    thread.join(timeout=10)
    assert not thread.is_alive(), "a bridge that cannot renew its lease must stop"
    assert outcomes[0].kind is OutcomeKind.RETRY  # type: ignore[attr-defined]
    assert outcomes[0].cause is RetryCause.CLAIM_LOST  # type: ignore[attr-defined]
    assert world.document["status"] == "processing", "the session is the next claim's: nothing written"
    assert EDITED not in world.objects.objects
    assert PREVIEW not in world.objects.objects


def test_run_stops_when_heartbeats_hang_instead_of_failing() -> None:
    world = World(lease_s=0.4, progress_interval_s=0.02)
    world.model.step_s = 0.05
    thread, outcomes = run_in_background(world, steps=100)
    wait_for_steps(world)
    world.sessions.heartbeat_hangs.set()
    thread.join(timeout=5)
    world.sessions.heartbeat_hangs.clear()
    assert not thread.is_alive(), "a heartbeat that never returns must not keep the run going"
    assert outcomes[0].kind is OutcomeKind.RETRY  # type: ignore[attr-defined]
    assert len(world.model.calls) == 1
    assert EDITED not in world.objects.objects


def test_a_run_waiting_in_the_queue_keeps_its_lease_writing_its_session_only_to_renew_it() -> None:
    """No step for two and a half leases (a run behind others in Triton's queue): heartbeats read every
    interval and write a sixth of a lease apart, and the lease holds: another delivery finds the job
    running."""
    lease_s = 1.2
    world = World(lease_s=lease_s, progress_interval_s=0.02)
    world.model.queued_s = 3.0
    started = time.monotonic()
    thread, outcomes = run_in_background(world, steps=2, message_id="m1")
    wait_for_steps(world)
    time.sleep(1.8)  # past the lease the claim wrote
    assert world.deliver(message_id="m2").kind is OutcomeKind.DUPLICATE, "the lease was renewed"
    thread.join(timeout=10)
    ran_s = time.monotonic() - started
    assert outcomes[0].kind is OutcomeKind.DONE  # type: ignore[attr-defined]
    assert world.document["attempt"] == 1
    beats, writes = world.sessions.heartbeats, world.sessions.heartbeat_writes
    # A renewal a sixth of a lease apart and the two steps' progress: about 17 writes of 60 to 150 heartbeats
    # (every heartbeat wrote before).
    assert writes <= ran_s / (lease_s * sessions.LEASE_RENEWED_AFTER_SHARE) + 2 + 1 < beats, (writes, beats)


def test_a_heartbeat_writes_only_a_due_renewal_or_new_progress() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    held = {"status": "processing", "claimId": "c1", "leaseExpiresAt": at + timedelta(seconds=60)}

    def beat(
        seconds_later: float, progress: tuple[int, int] | None = None, **fields: object
    ) -> tuple[Heartbeat, dict[str, object]]:
        """What a heartbeat answers; its write ({} for none)."""
        now = at + timedelta(seconds=seconds_later)
        answer, update = sessions.heartbeat({**held, **fields}, "c1", now, 60.0, progress, path=DOCUMENT)
        return answer, update or {}

    for later in (1.0, 9.9):
        assert beat(later) == (Heartbeat(cancel_requested=False, still_owner=True), {})
    answer, update = beat(10.0)
    assert answer.renewed
    assert update["leaseExpiresAt"] == at + timedelta(seconds=10 + 60)
    answer, update = beat(1.0, (3, 28))
    assert answer.renewed
    assert update["progress"] == {"step": 3, "total": 28}
    answer, update = beat(1.0, cancelRequested=True)
    assert (answer.cancel_requested, answer.renewed, update) == (True, False, {}), "read, not written"
    assert beat(1.0, leaseExpiresAt="not a time")[0].renewed, "a lease that cannot be read is renewed"


def test_run_whose_claim_was_taken_over_uploads_nothing_and_leaves_the_session_alone() -> None:
    """A stalled bridge wakes after another took the job over and the app cancelled it."""
    world = World(progress_interval_s=0.02)
    world.model.step_s = 0.02
    thread, outcomes = run_in_background(world, steps=100)
    wait_for_steps(world)
    taken_over = {
        "status": "cancelled",
        "claimId": "someone-else",
        "error": {"code": "cancelled", "message": "by the app"},
    }
    world.document.update(taken_over)
    thread.join(timeout=10)
    assert outcomes[0].kind is OutcomeKind.RETRY  # type: ignore[attr-defined]
    assert EDITED not in world.objects.objects
    assert world.document["status"] == "cancelled"
    assert world.document["error"] == taken_over["error"]


def test_the_claim_check_before_the_upload_is_one_read() -> None:
    """It reads whether the claim is current (the lease is the heartbeats' to renew; that the read writes
    nothing is shown on the emulator, tests/integration/bridge/test_exactly_once.py)."""
    world = World(progress_interval_s=60)
    assert world.deliver().kind is OutcomeKind.DONE
    assert world.sessions.claim_checks == 1


def test_claim_is_checked_right_before_the_upload() -> None:
    """No heartbeat falls between the takeover and the end of the run: the upload itself asks (beside the
    encoding), and neither object is written."""
    world = World(progress_interval_s=60)
    world.model.step_s = 0.05
    thread, outcomes = run_in_background(world, steps=4)
    wait_for_steps(world)
    world.document["claimId"] = "someone-else"
    thread.join(timeout=10)
    assert outcomes[0].kind is OutcomeKind.RETRY  # type: ignore[attr-defined]
    assert EDITED not in world.objects.objects
    assert PREVIEW not in world.objects.objects


def test_crash_between_upload_and_final_write_is_finished_without_running_again() -> None:
    world = World(lease_s=0.2)
    world.sessions.finish_fails_with = SessionTransientError("firestore unavailable")
    assert world.deliver(seed=5).kind is OutcomeKind.RETRY
    assert EDITED in world.objects.objects
    world.sessions.finish_fails_with = None
    time.sleep(0.3)  # the dead run's lease lapses
    outcome = world.deliver(seed=5)
    assert outcome.kind is OutcomeKind.DONE
    assert len(world.model.calls) == 1, "the model must not run again for results already uploaded"
    assert world.document["status"] == "done"
    assert world.document["result"]["seed"] == 5
    assert (world.document["result"]["width"], world.document["result"]["height"]) == (60, 40)
    assert world.document["model"]["recovered"] is True
    assert world.document["result"]["paths"]["edited"] == EDITED
    assert world.document["result"]["format"] == "png"


def died_after_its_upload(world: World, seed: int = 5) -> None:
    """A run that uploaded its results and died before its final write; its lease lapsed since."""
    world.sessions.finish_fails_with = SessionTransientError("firestore unavailable")
    assert world.deliver(seed=seed).kind is OutcomeKind.RETRY
    assert EDITED in world.objects.objects
    assert PREVIEW in world.objects.objects
    world.sessions.finish_fails_with = None
    time.sleep(0.3)


def assert_recorded_done(world: World, seed: int = 5) -> None:
    assert len(world.model.calls) == 1, "the model must not run again for results already uploaded"
    assert world.document["status"] == "done"
    assert world.document["error"] is None
    assert world.document["model"]["recovered"] is True
    assert world.document["result"]["paths"]["edited"] == EDITED
    assert world.document["result"]["seed"] == seed
    assert world.dead_letters.published == []


def test_a_cancel_that_comes_after_the_upload_of_a_run_that_died_finds_it_done() -> None:
    """Its results are uploaded: the cancel came too late, as for a run that lived to write `done` (which
    then stands). Cancelled instead, the session kept results the app was never told of."""
    world = World(lease_s=0.2)
    died_after_its_upload(world)
    world.document["cancelRequested"] = True
    outcome = world.deliver(seed=5)
    assert outcome.kind is OutcomeKind.DONE, outcome
    assert_recorded_done(world)


def test_results_uploaded_on_the_last_attempt_are_recorded_not_given_up() -> None:
    """The last attempt's run uploaded its results and died before its final write: the job is done, not
    failed `retries_exhausted` with its results beside it."""
    world = World(lease_s=0.2)  # max_delivery_attempts 3
    world.document["attempt"] = 2
    died_after_its_upload(world)
    assert world.document["attempt"] == 3
    outcome = world.deliver(seed=5)
    assert outcome.kind is OutcomeKind.DONE, outcome
    assert_recorded_done(world)


def test_a_cancel_finds_an_object_the_job_did_not_upload_no_result_of_its() -> None:
    """An image at the result's path without the session's key (another session's of the same id, or one
    put there by hand) is not the job's result: the cancel ends the job, as it would have."""
    world = World(lease_s=0.2)
    died_after_its_upload(world)
    world.objects.result_keys[EDITED] = "another-session's"
    world.document["cancelRequested"] = True
    outcome = world.deliver(seed=5)
    assert outcome.kind is OutcomeKind.CANCELLED, outcome
    assert world.document["status"] == "cancelled"


def test_a_session_cancelled_under_a_live_claim_is_left_to_its_run() -> None:
    """A copy of a job cancelled while it runs looks for no results (the live run records its own); once
    the claim has lapsed (the run died), what it uploaded is looked for, under the session's key."""
    now = datetime.now(UTC)
    document = {
        **queued_session(),
        "status": "processing",
        "attempt": 1,
        "claimId": "c1",
        "resultKey": "c1",
        "leaseExpiresAt": now + timedelta(seconds=30),
        "cancelRequested": True,
    }

    def claim() -> Claim:
        found, update = sessions.claim(
            document, claim_id="c2", owner="b", now=now, lease_s=30, message_id="m2", max_attempts=3
        )
        assert update is None
        return found

    assert claim() == Claim(ClaimKind.CANCEL_REQUESTED, status=JobStatus.PROCESSING)
    document["leaseExpiresAt"] = now - timedelta(seconds=1)
    assert claim() == Claim(
        ClaimKind.CANCEL_REQUESTED, status=JobStatus.PROCESSING, claimed_before=True, result_key="c1"
    )
    document.update({"cancelRequested": False, "attempt": 3})
    assert (claim().kind, claim().claimed_before, claim().result_key) == (ClaimKind.EXHAUSTED, True, "c1")


@pytest.mark.parametrize("refusal", ["cancelRequested", "attempt"])
def test_a_refused_claim_without_results_uploaded_ends_as_before(refusal: str) -> None:
    """A run that died before its upload left nothing: the cancel, or the spent attempts, end the job."""
    world = World(lease_s=0.2)
    world.model.fail_with = TritonUnavailableError("triton away")
    assert world.deliver(seed=5).kind is OutcomeKind.RETRY
    world.model.fail_with = None
    world.document.update({"cancelRequested": True} if refusal == "cancelRequested" else {"attempt": 3})
    outcome = world.deliver(seed=5)
    expected = {"cancelRequested": OutcomeKind.CANCELLED, "attempt": OutcomeKind.DEAD_LETTER}[refusal]
    assert outcome.kind is expected, outcome
    assert world.document["status"] == ("cancelled" if refusal == "cancelRequested" else "failed")
    assert EDITED not in world.objects.objects
    if refusal == "cancelRequested":  # it had started: its run stopped (Triton away) and was given back
        message = "cancelled by the app after an earlier run stopped without a result"
        assert world.document["error"] == {"code": "cancelled", "message": message}


def test_uploaded_results_whose_exif_breaks_pillows_reader_are_recorded_without_running_again() -> None:
    """A spliced JPEG result carries its original's EXIF, read or not by Pillow: one whose EXIF failed
    Pillow's open was taken for a result that does not decode, and the model ran again."""
    world = World(lease_s=0.2)
    photo = Image.open(io.BytesIO(world.objects.objects[f"{PREFIX}/original.png"])).convert("RGB")
    del world.objects.objects[f"{PREFIX}/original.png"]
    world.objects.objects[f"{PREFIX}/original.jpg"] = encode(
        photo, "JPEG", exif=exif_with_a_one_byte_resolution(1)
    )
    world.sessions.finish_fails_with = SessionTransientError("firestore unavailable")
    assert world.deliver(seed=5).kind is OutcomeKind.RETRY
    world.sessions.finish_fails_with = None
    time.sleep(0.3)  # the dead run's lease lapses
    assert world.deliver(seed=5).kind is OutcomeKind.DONE
    assert len(world.model.calls) == 1, "the model must not run again for results already uploaded"
    assert world.document["model"]["recovered"] is True
    assert world.document["result"]["format"] == "jpeg"


def test_attempt_limit_holds_for_a_job_that_kills_its_bridge() -> None:
    """No retryable error is ever seen when the bridge dies (OOM): the claim itself refuses the fourth try."""
    world = World()
    world.sessions.documents[PREFIX] = {
        "status": "processing",
        "claimId": "dead-bridge",
        "leaseExpiresAt": datetime.now(UTC) - timedelta(seconds=1),
        "attempt": 3,
        "error": {"code": "retrying", "message": "bridge killed"},
    }
    outcome = world.deliver()
    assert outcome.kind is OutcomeKind.DEAD_LETTER
    assert outcome.code is ErrorCode.RETRIES_EXHAUSTED
    assert world.model.calls == []
    assert world.document["attempt"] == 3
    assert world.document["status"] == "failed"
    assert world.dead_letters.published[0][2] is ErrorCode.RETRIES_EXHAUSTED
    assert world.acked == [True]


def test_failed_dead_letter_publish_leaves_the_job_for_its_next_delivery() -> None:
    world = World()
    world.model.fail_with = TritonUnavailableError("internal error")
    world.dead_letters.broken = True
    outcomes = [world.deliver().kind for _ in range(4)]
    assert outcomes == [
        OutcomeKind.RETRY,
        OutcomeKind.RETRY,
        OutcomeKind.DEAD_LETTER,
        OutcomeKind.DEAD_LETTER,
    ]
    assert world.acked == [False] * 4
    assert world.document["status"] == "queued", "no terminal status before the dead letter is out"
    assert len(world.model.calls) == 3
    world.dead_letters.broken = False
    assert world.deliver().kind is OutcomeKind.DEAD_LETTER
    assert world.acked[-1] is True
    assert world.document["status"] == "failed"
    assert world.document["error"]["code"] == "retries_exhausted"
    assert "internal error" in world.document["error"]["message"]
    assert len(world.dead_letters.published) == 1


def test_slow_storage_does_not_spend_the_run_deadline() -> None:
    """Waiting on our own dependencies is not the job's fault: deadline_exceeded is for slow runs only."""
    world = World(job_deadline_s=0.3)
    world.objects.read_delay_s = 0.25  # two reads: longer than the whole deadline
    assert world.deliver().kind is OutcomeKind.DONE


def test_session_path_firestore_refuses_is_dead_lettered_not_retried_forever() -> None:
    world = World()

    def refuse(*_args: object, **_kwargs: object) -> object:
        raise SessionRefusedError("firestore refused to claim the job: invalid path")

    world.sessions.claim = refuse  # type: ignore[method-assign]
    outcome = world.deliver()
    assert outcome.kind is OutcomeKind.DEAD_LETTER
    assert outcome.code is ErrorCode.INVALID_JOB
    assert world.acked == [True]


def test_a_jobs_heartbeats_claim_check_and_final_write_never_overlap() -> None:
    """Two transactions on one Firestore document wait on each other's locks (on the emulator a job stalled
    seconds, then logged its lease lost after finishing): one call at a time per job."""
    world = World(progress_interval_s=0.001)
    world.sessions.call_s = 0.03  # a beat is in flight most of the time (the watcher wakes every 50 ms)
    world.model.step_s = 0.02
    for index in range(5):
        world.upload("u1", f"s{index}")
        assert world.deliver(userId="u1", sessionId=f"s{index}", steps=10).kind is OutcomeKind.DONE
    assert world.sessions.most_at_once == 1


def test_a_heartbeat_hung_at_the_claim_check_is_a_lost_lease_not_a_hung_job() -> None:
    """The run ends while a heartbeat hangs: the claim check waits for it as long as the watcher would."""
    world = World(lease_s=2.0, progress_interval_s=0.02)
    world.model.step_s = 0.1
    thread, outcomes = run_in_background(world, steps=3)
    wait_for_steps(world)
    world.sessions.heartbeat_hangs.set()
    try:
        thread.join(timeout=10)
        assert not thread.is_alive(), "the claim check waited on a hung heartbeat"
    finally:
        world.sessions.heartbeat_hangs.clear()
    assert outcomes[0].kind is OutcomeKind.RETRY  # type: ignore[attr-defined]
    assert EDITED not in world.objects.objects


@pytest.mark.parametrize(
    ("attempt", "counted"),
    [
        ("2", 0),
        ("many", 0),
        (1.0, 1),
        (float("nan"), 0),
        (float("inf"), 0),
        ({"n": 1}, 0),
        (True, 0),
        (-3, 0),
    ],
)
def test_an_attempt_field_the_app_wrote_wrong_is_a_count_not_an_exception(
    attempt: object, counted: int
) -> None:
    """The session document is the app's too: a field of the wrong type must not make every delivery of the
    job an internal error until the dead-letter policy takes it, with the session never told."""
    now = datetime(2026, 12, 3, tzinfo=UTC)
    found, update = sessions.claim(
        {"status": "queued", "attempt": attempt},
        claim_id="c1",
        owner="localhost",
        now=now,
        lease_s=30,
        message_id="m1",
        max_attempts=3,
    )
    assert found.kind is ClaimKind.CLAIMED
    assert update is not None
    assert update["attempt"] == counted + 1


def test_document_bytes_counts_as_firestore_does() -> None:
    """Firestore's own example: `users/jeff/tasks/my_task_id` (44 bytes of name) with these four fields is
    147 bytes; maps, arrays, times and nulls by the same rules."""
    task = {"type": "Personal", "done": False, "priority": 1, "description": "Learn Cloud Firestore"}
    assert sessions.document_bytes(task) + 44 == 147
    nested = {"m": {"a": None, "b": [1.5, "xy"]}, "t": datetime(2026, 1, 1, tzinfo=UTC)}
    assert sessions.document_bytes(nested) == 32 + (2 + (2 + 1) + (2 + 8 + 3)) + (2 + 8)


@pytest.mark.parametrize(
    ("app_bytes", "kind"), [(900_000, ClaimKind.CLAIMED), (1_000_000, ClaimKind.TOO_LARGE)]
)
def test_a_session_document_without_room_for_the_bridges_fields_is_not_claimed(
    app_bytes: int, kind: ClaimKind
) -> None:
    """The app's own data in the session: a claim whose result could not be written after the run is not
    made."""
    found, update = sessions.claim(
        {"status": "queued", "strokes": "x" * app_bytes},
        claim_id="c1",
        owner="localhost",
        now=datetime(2026, 12, 4, tzinfo=UTC),
        lease_s=30,
        message_id="m1",
        max_attempts=3,
    )
    assert found.kind is kind
    assert (update is None) is (kind is ClaimKind.TOO_LARGE)


def test_a_job_whose_session_has_no_room_fails_with_a_sentence_and_never_runs() -> None:
    world = World()
    world.sessions.documents[DOCUMENT] = {"status": "queued", "strokes": "x" * 1_000_000}
    outcome = world.deliver()
    assert outcome.kind is OutcomeKind.DEAD_LETTER
    assert outcome.code is ErrorCode.INVALID_JOB
    assert "Firestore's limit of 1048576 bytes" in (outcome.reason or "")
    assert world.model.calls == []
    assert world.document["status"] == "failed"
    assert world.document["error"]["code"] == "invalid_job"
    assert world.acked == [True]


def test_a_dead_letter_whose_session_refuses_its_final_write_is_acked_not_redelivered_for_ever() -> None:
    """Firestore refusing the failed status itself (a document with no room even for that) cannot change on
    a redelivery: the dead letter holds the reason, and the message is acked."""
    world = World()
    world.sessions.documents[DOCUMENT] = {"status": "queued", "strokes": "x" * 1_000_000}

    def refuse(*_args: object, **_kwargs: object) -> object:
        raise SessionRefusedError("firestore refused to record failed: maximum entity size is 1048576 bytes")

    world.sessions.finish = refuse  # type: ignore[method-assign]
    outcome = world.deliver()
    assert outcome.kind is OutcomeKind.DEAD_LETTER
    assert world.acked == [True]
    assert len(world.dead_letters.published) == 1


def taken_over_at_the_final_write(world: World) -> None:
    """Another claim replaces ours in the moment before our final write (a takeover after a stall)."""
    finish = world.sessions.finish

    def after_a_takeover(*args: Any) -> bool:
        world.document["claimId"] = "another-bridges-claim"
        return finish(*args)

    world.sessions.finish = after_a_takeover  # type: ignore[method-assign]


@pytest.mark.parametrize("ending", ["done", "failed"])
def test_a_final_write_refused_for_a_lost_claim_is_no_outcome_of_ours(ending: str) -> None:
    """The job is the other claim's to end: this delivery is given back (counted as a lost claim, never as
    done or failed), and the session is left as the other claim has it."""
    world = World(upload_grace_s=0)
    if ending == "failed":
        del world.objects.objects[f"{PREFIX}/mask.png"]  # fails the job: mask_missing
    taken_over_at_the_final_write(world)
    outcome = world.deliver()
    assert (outcome.kind, outcome.cause) == (OutcomeKind.RETRY, RetryCause.CLAIM_LOST)
    assert world.document["status"] == "processing"
    assert world.document["claimId"] == "another-bridges-claim"
    assert world.metrics.sample("fluxfill_bridge_jobs_total", {"outcome": ending}) == 0


def test_a_run_that_finds_triton_unavailable_stops_the_bridge_claiming_until_it_is_ready() -> None:
    """Every job claimed while Triton is away would spend one of its attempts on nothing."""
    world = World(readiness=True)
    world.model.fail_with = TritonUnavailableError("connection refused")
    assert world.deliver().kind is OutcomeKind.RETRY
    attempts = world.document["attempt"]
    world.model.fail_with = None
    outcome = world.deliver(message_id="m2")
    assert (outcome.kind, outcome.cause) == (OutcomeKind.RETRY, RetryCause.MODEL_NOT_READY)
    assert world.document["attempt"] == attempts, "not claimed: no attempt spent"
    assert world.readiness is not None
    world.readiness.check()
    assert world.deliver(message_id="m3").kind is OutcomeKind.DONE


def _results_uploaded_then_crash(world: World) -> None:
    """An attempt uploads the results and dies before its final write; its lease then lapses."""
    world.sessions.finish_fails_with = SessionTransientError("firestore unavailable")
    assert world.deliver(seed=5).kind is OutcomeKind.RETRY
    world.sessions.finish_fails_with = None
    time.sleep(0.3)


def _made_again_under_its_id(world: World) -> bytes:
    """The app deletes the session's document, done, and makes it again under the same id with a new mask;
    the folder keeps the deleted session's results (the bridge deletes nothing). Returns its edited image."""
    assert world.deliver(seed=5).kind is OutcomeKind.DONE
    world.sessions.documents[DOCUMENT] = queued_session()
    world.objects.objects[f"{PREFIX}/mask.png"] = png(np.full((40, 60), 255, np.uint8))
    return world.objects.objects[EDITED]


def test_results_an_attempt_on_a_bridge_deployed_before_keys_uploaded_are_recorded_as_before() -> None:
    """A rolling deploy: the job's first attempt ran on the old bridge, which wrote neither `resultKey` nor
    the objects' key, uploaded and died; the new bridge's attempt may not refuse them as another's."""
    world = World(lease_s=0.2)
    world.sessions.documents[DOCUMENT] = {
        **queued_session(),
        "attempt": 1,
        "error": {"code": "retrying", "message": "the old bridge stopped"},
    }
    world.objects.objects[EDITED] = png(photo())
    outcome = world.deliver(seed=5)
    assert outcome.kind is OutcomeKind.DONE
    assert world.model.calls == []
    assert world.document["model"]["recovered"] is True
    assert "resultKey" not in world.document, "its results carry none: it keeps none"
    assert PREVIEW not in world.objects.result_keys, "the preview made for it carries none either"


def test_a_replay_of_a_session_a_bridge_deployed_before_keys_claimed_keeps_no_key() -> None:
    """`fluxfill dlq replay` sets the attempts back to 0: the claim after it took the session for one never
    claimed and gave it a key, and the old bridge's upload (no key) failed the job `result_path_taken`."""
    world = World()
    world.sessions.documents[DOCUMENT] = {
        **queued_session(),
        "attempt": 0,
        "replayed": {"at": datetime.now(UTC), "reason": "triton fixed", "previousAttempts": 3},
    }
    world.objects.objects[EDITED] = png(photo())
    outcome = world.deliver(seed=5)
    assert outcome.kind is OutcomeKind.DONE, outcome.reason
    assert "resultKey" not in world.document


def test_a_replayed_session_never_claimed_before_gets_a_key() -> None:
    """Dead-lettered by Pub/Sub unclaimed (no bridge took it), then replayed: its first claim is its first."""
    world = World()
    world.sessions.documents[DOCUMENT] = {
        **queued_session(),
        "replayed": {"at": datetime.now(UTC), "reason": "overload", "previousAttempts": None},
    }
    assert world.deliver(seed=5).kind is OutcomeKind.DONE
    assert world.objects.result_keys[EDITED] == world.document["resultKey"] != ""


def test_a_session_made_again_under_its_id_is_not_given_the_deleted_ones_result() -> None:
    """Its run found the deleted session's edited image at the result's path, kept it (create-only), and
    recorded the session done with it: the user was shown the old edit."""
    world = World()
    old_edit = _made_again_under_its_id(world)
    outcome = world.deliver(seed=6)
    assert (outcome.kind, outcome.code) == (OutcomeKind.FAILED, ErrorCode.RESULT_PATH_TAKEN)
    assert world.document["status"] == "failed"
    assert "earlier session of the same id" in world.document["error"]["message"]
    assert "result" not in world.document
    assert world.objects.objects[EDITED] == old_edit


def test_a_session_made_again_whose_first_attempt_died_is_not_recorded_with_the_deleted_ones_result() -> None:
    """A later attempt looks for results an earlier one uploaded: it took the deleted session's, ran nothing
    and recorded them (`recovered`)."""
    world = World(lease_s=0.2)
    old_edit = _made_again_under_its_id(world)
    world.model.fail_with = TritonUnavailableError("triton restarting")
    assert world.deliver(seed=6).kind is OutcomeKind.RETRY
    world.model.fail_with = None
    outcome = world.deliver(seed=6)
    assert (outcome.kind, outcome.code) == (OutcomeKind.FAILED, ErrorCode.RESULT_PATH_TAKEN)
    assert world.document["attempt"] == 2
    assert "result" not in world.document
    assert world.objects.objects[EDITED] == old_edit


def _turned_jpeg_original(world: World) -> None:
    """The world's photo as a phone stores it: 40 wide and 60 high, turned upright (60 by 40) by its EXIF."""
    del world.objects.objects[f"{PREFIX}/original.png"]
    world.objects.objects[f"{PREFIX}/original.jpg"] = phone_jpeg(turn=8)


def test_recovered_results_of_a_turned_photo_record_its_upright_size() -> None:
    """A run records the upright size; the recovery recorded the stored grid's (40 by 60)."""
    world = World(lease_s=0.2)
    _turned_jpeg_original(world)
    _results_uploaded_then_crash(world)
    assert world.deliver(seed=5).kind is OutcomeKind.DONE
    assert world.document["model"]["recovered"] is True
    assert (world.document["result"]["width"], world.document["result"]["height"]) == (60, 40)


def test_uploaded_results_without_their_preview_get_it_made_from_the_kept_image_without_running_again() -> (
    None
):
    """The preview is made from the edited image the earlier attempt kept (the model ran again once, and the
    preview showed the new run's image beside the kept one's: results of one seed, yet not one image)."""
    world = World(lease_s=0.2)
    _turned_jpeg_original(world)
    _results_uploaded_then_crash(world)
    first_preview = world.objects.objects.pop(PREVIEW)
    assert world.deliver(seed=5).kind is OutcomeKind.DONE
    assert len(world.model.calls) == 1, "the model ran again for an edited image already uploaded"
    assert world.document["model"]["recovered"] is True
    assert world.document["result"]["paths"] == {"edited": f"{PREFIX}/edited.jpg", "preview": PREVIEW}
    assert (world.document["result"]["width"], world.document["result"]["height"]) == (60, 40), "upright"
    made, first = (Image.open(io.BytesIO(data)) for data in (world.objects.objects[PREVIEW], first_preview))
    assert (made.format, made.size) == ("JPEG", first.size) == ("JPEG", (60, 40))
    made_pixels, first_pixels = (np.asarray(image, np.int16) for image in (made, first))
    # A noise photo through JPEG twice: about 6 grey levels apart; turned by a half, about 70.
    assert np.abs(made_pixels - first_pixels).mean() < 12, "the preview is not the kept image's, upright"


def test_a_result_format_changed_between_attempts_keeps_the_one_edited_image() -> None:
    """An edited JPEG kept without its preview, then `result_format` png: the rerun wrote an edited.png
    beside it, and every later look for the job's results was refused as ambiguous."""
    world = World(lease_s=0.2)
    photo = Image.open(io.BytesIO(world.objects.objects.pop(f"{PREFIX}/original.png"))).convert("RGB")
    world.objects.objects[f"{PREFIX}/original.jpg"] = encode(photo, "JPEG")
    _results_uploaded_then_crash(world)
    del world.objects.objects[PREVIEW]
    as_png = world.another_bridge(lease_s=0.2, result_format="png")
    assert world.deliver(seed=5, handler=as_png).kind is OutcomeKind.DONE
    edited = [path for path in world.objects.objects if "/edited." in path]
    assert edited == [f"{PREFIX}/edited.jpg"]
    assert world.document["result"]["paths"]["edited"] == edited[0]
    assert world.document["result"]["format"] == "jpeg"


def test_two_edited_images_of_one_job_fail_it_naming_both() -> None:
    """Two objects at the result's path (`edited.*`): which is the job's cannot be told. The refusal was the
    original photo's code (`original_ambiguous`)."""
    world = World(lease_s=0.2)
    _results_uploaded_then_crash(world)
    world.objects.objects[f"{PREFIX}/edited.jpg"] = encode(Image.new("RGB", (60, 40)), "JPEG")
    outcome = world.deliver(seed=5)
    assert outcome.kind is OutcomeKind.FAILED
    assert world.document["error"]["code"] == ErrorCode.RESULT_PATH_TAKEN
    assert EDITED in world.document["error"]["message"]
    assert f"{PREFIX}/edited.jpg" in world.document["error"]["message"]
    assert len(world.model.calls) == 1


def test_a_storage_blip_while_earlier_results_are_looked_for_gives_the_job_back_at_once() -> None:
    """The claim is released, as for a blip during a run: it was held until its lease lapsed (a minute as
    shipped), the job's next delivery bounced as busy meanwhile."""
    world = World(lease_s=0.2)
    _results_uploaded_then_crash(world)
    world.objects.fail_with = StorageTransientError("503 from storage")
    outcome = world.deliver(seed=5)
    assert (outcome.kind, outcome.cause) == (OutcomeKind.RETRY, RetryCause.STORAGE)
    assert world.document["status"] == "queued", "the claim was left to lapse"
    assert world.document["error"]["cause"] == RetryCause.STORAGE
    world.objects.fail_with = None
    assert world.deliver(seed=5).kind is OutcomeKind.DONE
    assert len(world.model.calls) == 1


def test_an_object_at_the_results_path_that_is_no_image_fails_the_job_saying_so() -> None:
    """Results are written create-only and never replace an object: running the job again (as once) left the
    session `done` with its `edited` path naming the object that is no image."""
    world = World(lease_s=0.2)
    _results_uploaded_then_crash(world)
    world.objects.objects[EDITED] = b"not an image"
    outcome = world.deliver(seed=5)
    assert outcome.kind is OutcomeKind.FAILED
    assert world.document["status"] == "failed"
    assert world.document["error"]["code"] == ErrorCode.RESULT_PATH_TAKEN
    assert EDITED in world.document["error"]["message"]
    assert len(world.model.calls) == 1, "running again cannot replace it"


@pytest.mark.parametrize(
    "taken", [b"not an image", encode(Image.new("RGB", (60, 40)), "GIF")], ids=["no image", "a GIF"]
)
def test_an_object_that_is_no_image_where_a_first_attempt_writes_its_result_fails_the_job(
    taken: bytes,
) -> None:
    """An `edited.*` the app's Storage rules should have refused: the run's create-only write leaves it. An
    image of a format the service does not read counts as none, as it does when a later attempt recovers
    results (a GIF there was kept as the result, and the session named it)."""
    world = World()
    world.objects.objects[EDITED] = taken
    outcome = world.deliver(seed=5)
    assert outcome.kind is OutcomeKind.FAILED
    assert world.document["error"]["code"] == ErrorCode.RESULT_PATH_TAKEN
    assert world.objects.objects[EDITED] == taken


def test_the_png_setting_writes_a_jpeg_photos_result_as_png() -> None:
    world = World(result_format="png")
    photo = world.objects.objects.pop(f"{PREFIX}/original.png")
    world.objects.objects[f"{PREFIX}/original.jpg"] = encode(
        Image.open(io.BytesIO(photo)).convert("RGB"), "JPEG"
    )
    assert world.deliver().kind is OutcomeKind.DONE
    assert world.document["result"]["format"] == "png"
    assert Image.open(io.BytesIO(world.objects.objects[EDITED])).format == "PNG"
