"""The job handler's outcome for each situation, over in-memory fakes of its ports."""

import copy
import io
import threading
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from PIL import Image

from fluxfill.bridge.contract import TERMINAL_STATUSES, ErrorCode, JobMessage, JobStatus
from fluxfill.bridge.errors import ModelRefusedInputError, StorageTransientError, TritonUnavailableError
from fluxfill.bridge.handler import default_seed
from fluxfill.bridge.outcome import Delivery, OutcomeKind
from tests.unit.bridge.fakes import png
from tests.unit.bridge.world import DOCUMENT, PREFIX, SESSION, USER, World, box_mask, photo, queued_session


def test_happy_path_uploads_result_and_preview_and_records_done() -> None:
    world = World()
    world.model.step_s = 0.03
    outcome = world.deliver(prompt="a hat", steps=4, seed=11)
    assert outcome.kind is OutcomeKind.DONE
    assert outcome.ack
    edited = np.asarray(Image.open(io.BytesIO(world.objects.objects[f"{PREFIX}/edited.png"])))
    assert edited.shape == (40, 60, 3)
    untouched = box_mask() < 128
    assert np.array_equal(edited[untouched], photo()[untouched])
    preview = Image.open(io.BytesIO(world.objects.objects[f"{PREFIX}/preview.jpg"]))
    assert preview.format == "JPEG"
    assert max(preview.size) <= 512
    doc = world.document
    assert doc["status"] == "done"
    assert doc["error"] is None
    assert doc["result"] == {
        "paths": {"edited": f"{PREFIX}/edited.png", "preview": f"{PREFIX}/preview.jpg"},
        "width": 60,
        "height": 40,
        "seed": 11,
        "format": "png",
        "encoding": "lossless",
    }
    assert doc["model"]["prompt"] == "a hat"
    assert doc["model"]["steps"] == 4
    assert set(doc["timings"]) >= {"download", "inference", "upload", "total", "queue"}
    assert doc["progress"] == {"step": 4, "total": 4}
    assert world.sessions.progress_writes, "progress must be written while the job runs"
    assert world.metrics.sample("fluxfill_bridge_jobs_total", {"outcome": "done"}) == 1


def test_progress_writes_are_throttled_to_the_interval() -> None:
    world = World(progress_interval_s=0.2)
    world.model.step_s = 0.01
    world.deliver(steps=60)  # ~0.6 s of steps: at most a few writes, not 60
    assert 1 <= len(world.sessions.progress_writes) <= 5


def test_duplicate_delivery_of_a_finished_job_does_no_work() -> None:
    world = World()
    assert world.deliver().kind is OutcomeKind.DONE
    second = world.deliver()
    assert second.kind is OutcomeKind.DUPLICATE
    assert second.ack
    assert len(world.model.calls) == 1


def test_job_leased_by_another_live_bridge_is_retried_later() -> None:
    world = World()
    world.sessions.documents[DOCUMENT] = {
        "status": "processing",
        "owner": "bridge-b",
        "leaseExpiresAt": datetime.now(UTC) + timedelta(minutes=1),
        "attempt": 1,
    }
    outcome = world.deliver()
    assert outcome.kind is OutcomeKind.RETRY
    assert not outcome.ack
    assert world.model.calls == []
    assert world.document["owner"] == "bridge-b"


def test_expired_lease_of_a_crashed_bridge_is_taken_over() -> None:
    world = World()
    world.sessions.documents[DOCUMENT] = {
        "status": "processing",
        "owner": "bridge-b",
        "leaseExpiresAt": datetime.now(UTC) - timedelta(seconds=1),
        "attempt": 1,
    }
    assert world.deliver().kind is OutcomeKind.DONE
    assert world.document["attempt"] == 2
    assert world.document["owner"] == "bridge-a"


@pytest.mark.parametrize("data", [b"\xff\xfe", b"not json", b"[1, 2]", b'"text"'])
def test_unparseable_message_is_dead_lettered_with_malformed_code(data: bytes) -> None:
    world = World()
    before = copy.deepcopy(world.sessions.documents)
    outcome = world.handler.handle(Delivery(data, "m1"))
    assert outcome.kind is OutcomeKind.DEAD_LETTER
    assert outcome.ack
    assert outcome.code is ErrorCode.MALFORMED_MESSAGE
    assert world.sessions.documents == before


def test_invalid_field_fails_the_session_and_dead_letters_naming_the_field() -> None:
    world = World()
    outcome = world.deliver(steps=0, colour="red")
    assert outcome.kind is OutcomeKind.DEAD_LETTER
    assert outcome.code is ErrorCode.INVALID_JOB
    assert "steps" in outcome.reason
    assert "colour" in outcome.reason
    assert world.document["status"] == "failed"
    assert world.document["error"]["code"] == "invalid_job"
    assert world.model.calls == []


def test_a_session_id_of_characters_the_contract_refuses_gets_its_refusal_recorded() -> None:
    """Before, the job was dead-lettered with no record: the app's session stayed queued for ever."""
    world = World()
    session = "2026-12-07T10:00:00.000Z"
    document = f"users/{USER}/sessions/{session}"
    world.sessions.documents[document] = queued_session()
    outcome = world.deliver(sessionId=session)
    assert outcome.kind is OutcomeKind.DEAD_LETTER
    assert world.dead_letters.published, "the operator's copy"
    recorded = world.sessions.documents[document]
    assert recorded["status"] == "failed"
    assert recorded["error"]["code"] == "invalid_job"
    assert "sessionId: Value error, an id is 1 to 128 of the characters" in recorded["error"]["message"]
    assert world.objects.reads == [], "nothing of the job's objects is looked at"


def test_oversized_object_is_refused_without_being_downloaded() -> None:
    world = World(max_object_bytes=100)
    outcome = world.deliver()
    assert outcome.code is ErrorCode.OBJECT_TOO_LARGE
    assert world.objects.reads == []


def test_corrupt_image_fails_with_corrupt_image() -> None:
    world = World()
    world.objects.objects[f"{PREFIX}/original.png"] = png(photo())[:60]
    outcome = world.deliver()
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.code is ErrorCode.CORRUPT_IMAGE


@pytest.mark.parametrize(
    ("mask", "brightest"),
    [
        (np.zeros((40, 60), np.uint8), 0),  # all black
        (np.full((40, 60), 76, np.uint8), 76),  # red strokes on black, as grey: 76
        (np.zeros((40, 60, 4), np.uint8), 0),  # all transparent
        (box_mask() // 255, 1),  # a boolean array saved as 8-bit: 0s and 1s
    ],
    ids=["black", "dark-strokes", "transparent", "zeros-and-ones"],
)
def test_a_mask_that_selects_nothing_fails_the_job_unrun(mask: np.ndarray, brightest: int) -> None:
    """An app that paints its mask in a colour darker than mid-grey, or exports it empty, got its user's
    photo back unchanged as `done`, after the whole photo went to Triton for nothing."""
    world = World()
    world.objects.objects[f"{PREFIX}/mask.png"] = png(mask)
    outcome = world.deliver()
    assert (outcome.kind, outcome.code) == (OutcomeKind.FAILED, ErrorCode.MASK_EMPTY)
    assert world.model.calls == []
    assert world.document["error"]["code"] == "mask_empty"
    message = world.document["error"]["message"]
    assert "selects no pixel to repaint" in message
    assert f"its largest value is {brightest}" in message
    assert ("needs its 1s at 255" in message) is (brightest == 1)
    assert not any(path.endswith(("edited.png", "preview.jpg")) for path in world.objects.objects)


def test_triton_unavailable_is_retried_and_the_claim_given_back() -> None:
    world = World()
    world.model.fail_with = TritonUnavailableError("connection refused")
    outcome = world.deliver()
    assert outcome.kind is OutcomeKind.RETRY
    assert world.document["status"] == "queued"
    assert world.document["owner"] is None
    world.model.fail_with = None
    assert world.deliver().kind is OutcomeKind.DONE
    assert world.document["attempt"] == 2


def test_storage_transient_error_is_retried() -> None:
    world = World()
    world.objects.fail_with = StorageTransientError("503 from storage")
    assert world.deliver().kind is OutcomeKind.RETRY


def test_last_attempt_fails_the_job_and_dead_letters_it() -> None:
    world = World()
    world.model.fail_with = TritonUnavailableError("internal error: RuntimeError")
    assert [world.deliver(attempt=n).kind for n in (1, 2)] == [OutcomeKind.RETRY] * 2
    outcome = world.deliver(attempt=3)
    assert outcome.kind is OutcomeKind.DEAD_LETTER
    assert outcome.code is ErrorCode.RETRIES_EXHAUSTED
    assert world.document["status"] == "failed"
    assert world.document["attempt"] == 3
    assert "RuntimeError" in world.document["error"]["message"]


STEPS_REFUSED = "the model refused the input: STEPS: must be between 1 and 50, got 80"


def test_a_value_of_the_runtime_config_the_model_refuses_is_retried_then_dead_lettered_not_failed() -> None:
    """Its user sent no steps: the document's value is the service's to mend (and the job to replay), where
    the job failed as the user's own input before."""
    world = World(config_document={"defaults": {"steps": 80}})
    world.model.fail_with = ModelRefusedInputError(STEPS_REFUSED, "STEPS")
    outcomes = [world.deliver(attempt=n) for n in (1, 2, 3)]
    assert [outcome.kind for outcome in outcomes] == [OutcomeKind.RETRY] * 2 + [OutcomeKind.DEAD_LETTER]
    assert outcomes[-1].code is ErrorCode.RETRIES_EXHAUSTED
    assert outcomes[-1].fault == "service"
    assert [call.steps for call in world.model.calls] == [80] * 3
    assert world.document["error"]["code"] == "retries_exhausted"
    assert world.document["error"]["message"].endswith(
        f"{STEPS_REFUSED} (the runtime config's defaults.steps, not the job's: mend the document with "
        "`fluxfill config set`)"
    )
    assert len(world.dead_letters.published) == 1


def test_the_same_value_sent_by_the_job_fails_it_as_its_own_input() -> None:
    world = World(config_document={"defaults": {"steps": 80}})
    world.model.fail_with = ModelRefusedInputError(STEPS_REFUSED, "STEPS")
    outcome = world.deliver(steps=80)
    assert (outcome.kind, outcome.code) == (OutcomeKind.FAILED, ErrorCode.MODEL_REJECTED_INPUT)
    assert world.document["error"] == {"code": "model_rejected_input", "message": STEPS_REFUSED}
    assert world.dead_letters.published == []


def test_deliveries_bounced_unclaimed_spend_no_attempt() -> None:
    """Pub/Sub's delivery_attempt also counts nacks of copies another bridge held: only claims count."""
    world = World()
    world.model.fail_with = TritonUnavailableError("internal error: RuntimeError")
    outcome = world.deliver(attempt=9)
    assert outcome.kind is OutcomeKind.RETRY
    assert world.document["status"] == "queued"
    assert world.document["attempt"] == 1


def test_full_triton_queue_is_resent_within_the_same_attempt() -> None:
    world = World()
    world.model.busy_calls = 3
    outcome = world.deliver()
    assert outcome.kind is OutcomeKind.DONE
    assert len(world.model.calls) == 4
    assert world.document["attempt"] == 1
    assert world.metrics.sample("fluxfill_bridge_triton_errors_total", {"error": "TritonBusyError"}) == 3


def test_triton_queue_full_until_the_deadline_gives_the_job_back() -> None:
    world = World(job_deadline_s=0.5)
    world.model.busy_calls = 10_000
    started = time.monotonic()
    outcome = world.deliver()
    assert outcome.kind is OutcomeKind.RETRY
    assert "maximum queue size" in outcome.reason
    assert time.monotonic() - started < 1.5
    assert world.document["status"] == "queued"
    assert 2 <= len(world.model.calls) < 20


def test_cancel_while_triton_queue_is_full_cancels_the_job() -> None:
    world = World(job_deadline_s=30.0)
    world.model.busy_calls = 10_000
    threading.Timer(0.2, lambda: world.document.update(cancelRequested=True)).start()
    outcome = world.deliver()
    assert outcome.kind is OutcomeKind.CANCELLED
    assert world.document["status"] == "cancelled"


def test_unexpected_error_does_not_escape_and_is_retried() -> None:
    world = World()
    world.model.fail_with = KeyError("bug")
    assert world.deliver().kind is OutcomeKind.RETRY


def test_cancel_requested_while_running_cancels_the_run() -> None:
    world = World()
    world.model.step_s = 0.05

    def cancel_soon() -> None:
        time.sleep(0.15)
        world.document["cancelRequested"] = True

    threading.Thread(target=cancel_soon).start()
    outcome = world.deliver(steps=100)
    assert outcome.kind is OutcomeKind.CANCELLED
    assert world.document["status"] == "cancelled"
    assert f"{PREFIX}/edited.png" not in world.objects.objects


def test_a_cancel_while_the_run_is_queued_is_seen_by_heartbeats_that_write_nothing() -> None:
    world = World(progress_interval_s=0.02)  # the lease (60 s) is not due for renewal
    world.model.queued_s = 30.0

    def cancel_soon() -> None:
        time.sleep(0.3)
        world.document["cancelRequested"] = True

    threading.Thread(target=cancel_soon).start()
    started = time.monotonic()
    outcome = world.deliver(steps=4)
    assert outcome.kind is OutcomeKind.CANCELLED
    assert time.monotonic() - started < 5, "the cancel was seen at a heartbeat"
    assert world.sessions.heartbeats > 0
    assert world.sessions.heartbeat_writes == 0, "nothing to write: no progress, the lease fresh"
    assert world.document["status"] == "cancelled"


def test_cancel_requested_before_start_never_runs_the_model() -> None:
    world = World()
    world.sessions.documents[DOCUMENT] = {"status": "queued", "cancelRequested": True}
    assert world.deliver().kind is OutcomeKind.CANCELLED
    assert world.model.calls == []
    assert world.document["status"] == "cancelled"
    assert world.document["error"]["message"] == "cancelled by the app before it started"


def test_deadline_fails_the_job_with_deadline_exceeded() -> None:
    world = World(job_deadline_s=0.1)
    world.model.step_s = 0.05
    outcome = world.deliver(steps=100)
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.code is ErrorCode.DEADLINE_EXCEEDED
    assert world.document["error"]["code"] == "deadline_exceeded"


def test_deadline_with_triton_ready_all_along_fails_the_job() -> None:
    world = World(job_deadline_s=0.3, readiness=True)
    world.model.step_s = 0.05
    outcome = world.deliver(steps=100)
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.code is ErrorCode.DEADLINE_EXCEEDED


def test_deadline_reached_after_triton_was_unavailable_during_the_run_gives_the_job_back() -> None:
    # Seen in the chaos run: Triton hung (SIGSTOP) for 12 of a running job's 15 s and answered READY again
    # just before the deadline; the job was failed as too slow, though the hang was Triton's, not the job's.
    world = World(job_deadline_s=1.0, readiness=True)
    assert world.readiness is not None
    world.model.step_s = 0.05

    def hang_then_recover() -> None:
        while not world.model.calls:  # the run has begun: the hang falls inside it
            time.sleep(0.01)
        world.model.ready = False
        world.readiness.check()  # the readiness poll sees the hang
        time.sleep(0.3)
        world.model.ready = True
        world.readiness.check()  # and the recovery, before the run's deadline

    threading.Thread(target=hang_then_recover, daemon=True).start()
    outcome = world.deliver(steps=100)
    assert outcome.kind is OutcomeKind.RETRY
    assert "unavailable" in outcome.reason
    assert world.document["status"] == "queued"
    assert world.document["attempt"] == 1
    # The next delivery runs it again (Triton is ready), and this time the run is not cut short.
    world.model.step_s = 0.0
    assert world.deliver(steps=100).kind is OutcomeKind.DONE


def test_hard_stop_cancels_the_run_and_gives_the_job_back() -> None:
    world = World()
    world.model.step_s = 0.05
    threading.Timer(0.1, world.handler.hard_stop.set).start()
    outcome = world.deliver(steps=100)
    assert outcome.kind is OutcomeKind.RETRY
    assert world.document["status"] == "queued"


def test_result_left_by_an_earlier_attempt_counts_as_done() -> None:
    """An attempt of this session's (its first claim's key on the object) whose session was then requeued
    (`fluxfill dlq replay` starts the attempts again): the create-only upload keeps it."""
    world = World()
    world.document["resultKey"] = "first-claim"
    earlier = png(np.zeros((40, 60, 3), np.uint8))
    world.objects.create(f"{PREFIX}/edited.png", earlier, "image/png", "first-claim")
    assert world.deliver().kind is OutcomeKind.DONE
    assert world.objects.objects[f"{PREFIX}/edited.png"] == earlier
    assert world.document["resultKey"] == "first-claim"


def test_an_image_no_attempt_of_the_session_left_at_the_results_path_fails_the_job() -> None:
    """It was taken for an earlier attempt's upload, and the session recorded done with it."""
    world = World()
    foreign = png(np.zeros((40, 60, 3), np.uint8))
    world.objects.objects[f"{PREFIX}/edited.png"] = foreign
    assert world.deliver().kind is OutcomeKind.FAILED
    assert world.document["error"]["code"] == ErrorCode.RESULT_PATH_TAKEN
    assert "did not upload" in world.document["error"]["message"]
    assert world.objects.objects[f"{PREFIX}/edited.png"] == foreign


def test_absent_seed_is_fixed_by_the_session_so_retries_repaint_the_same() -> None:
    world = World()
    world.deliver()
    job = JobMessage(userId=USER, sessionId=SESSION)
    assert world.model.calls[0].seed == default_seed(job) == world.document["result"]["seed"]


def test_terminal_state_is_never_left() -> None:
    world = World()
    world.sessions.documents[DOCUMENT] = {"status": JobStatus.FAILED.value, "error": {"code": "x"}}
    assert world.deliver().kind is OutcomeKind.DUPLICATE
    assert world.document["status"] == "failed"
    assert world.model.calls == []


def test_invalid_duplicate_does_not_fail_a_job_another_bridge_is_running() -> None:
    world = World()
    running = {
        "status": "processing",
        "owner": "bridge-b",
        "leaseExpiresAt": datetime.now(UTC) + timedelta(minutes=1),
    }
    world.sessions.documents[DOCUMENT] = dict(running)
    outcome = world.deliver(steps=0)
    assert outcome.kind is OutcomeKind.DEAD_LETTER
    assert world.document == running


@pytest.mark.parametrize("status", sorted(TERMINAL_STATUSES))
def test_an_invalid_copy_of_an_ended_jobs_message_leaves_its_outcome(status: JobStatus) -> None:
    """A message altered on its way (or an app's resend with a bad field) after the job ended: no claim is
    made for it, and the failure it would record must not replace the outcome the app already has."""
    world = World()
    ended = {"status": status.value, "result": {"seed": 7}, "finishedAt": datetime.now(UTC)}
    world.sessions.documents[DOCUMENT] = dict(ended)
    outcome = world.deliver(steps=0)
    assert outcome.kind is OutcomeKind.DEAD_LETTER
    assert world.document == ended
    assert world.model.calls == []


def phone_jpeg(turn: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = turn
    buffer = io.BytesIO()
    # Stored sideways: upright it is the 60x40 photo the mask was painted on.
    Image.fromarray(np.rot90(photo(), -1)).save(buffer, format="JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


def test_a_jpeg_original_gets_a_spliced_jpeg_result_named_after_its_format() -> None:
    world = World()
    del world.objects.objects[f"{PREFIX}/original.png"]
    world.objects.objects[f"{PREFIX}/original.jpg"] = phone_jpeg(turn=8)
    assert world.deliver(seed=3).kind is OutcomeKind.DONE
    result = world.document["result"]
    assert result["paths"]["edited"] == f"{PREFIX}/edited.jpg"
    assert (result["format"], result["encoding"], result["width"], result["height"]) == (
        "jpeg",
        "dct_splice",
        60,
        40,
    )
    assert f"{PREFIX}/edited.png" not in world.objects.objects
    assert world.objects.content_types[f"{PREFIX}/edited.jpg"] == "image/jpeg"
    edited = Image.open(io.BytesIO(world.objects.objects[f"{PREFIX}/edited.jpg"]))
    assert edited.getexif()[0x0112] == 8
    assert edited.size == (40, 60)
