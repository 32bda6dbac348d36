"""A session the app fills up to Firestore's limit while its job runs still gets the job's outcome.

The claim checks for room (sessions.BRIDGE_ROOM_BYTES), but the app may write its own fields at any time. The
fake session store refuses writes past 1 MiB as Firestore does, so every write here is sized as in production.
"""

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fluxfill.bridge import sessions
from fluxfill.bridge.contract import ErrorCode, JobStatus
from fluxfill.bridge.errors import PermanentJobError, TritonUnavailableError
from fluxfill.bridge.outcome import OutcomeKind
from fluxfill.bridge.ports import InferenceRequest, InferenceResult
from fluxfill.bridge.unclaimed import error_fields
from tests.unit.bridge.world import DOCUMENT, PREFIX, World

NAME_BYTES = sum(len(part) + 1 for part in DOCUMENT.split("/")) + 16


def room_left(document: dict[str, Any]) -> int:
    return sessions.MAX_DOCUMENT_BYTES - NAME_BYTES - sessions.document_bytes(document)


def fill(document: dict[str, Any], room: int) -> None:
    """The app's own field grown until the document has `room` bytes left (a field of the app's: its name's
    bytes plus one, its value's plus one)."""
    document.pop("strokes", None)
    document["strokes"] = "x" * (room_left(document) - len("strokes") - 2 - room)
    assert room_left(document) == room


def app_fills_during_the_run(world: World, room: int, also: Callable[[dict[str, Any]], None] = dict) -> None:
    """Before the model's first step the app writes its own data (and `also`) until `room` bytes are left."""
    infer = world.model.infer

    def infer_after_the_app_wrote(request: InferenceRequest, **kwargs: Any) -> InferenceResult:
        document = world.document
        also(document)
        fill(document, room)
        return infer(request, **kwargs)

    world.model.infer = infer_after_the_app_wrote  # type: ignore[method-assign]


def uncaught_thread_errors() -> list[BaseException]:
    """Exceptions that end a thread (a heartbeat's), collected instead of printed."""
    caught: list[BaseException] = []
    threading.excepthook = lambda args: caught.append(args.exc_value)  # type: ignore[assignment,arg-type,misc]
    return caught


def test_a_cancel_in_a_session_filled_to_the_last_byte_is_recorded() -> None:
    """The app asks to cancel in the same write that leaves no byte: the cancelled status still fits (the
    claim's own fields make room), the job ends acked and is not dead-lettered."""
    world = World()
    world.model.steps, world.model.step_s = 200, 0.02
    app_fills_during_the_run(world, 0, also=lambda document: document.update(cancelRequested=True))
    hook, errors = threading.excepthook, uncaught_thread_errors()
    try:
        outcome = world.deliver()
    finally:
        threading.excepthook = hook
    assert outcome.kind is OutcomeKind.CANCELLED, outcome.reason
    assert world.document["status"] == "cancelled"
    assert world.document["error"]["code"] == "cancelled"
    assert world.acked == [True]
    assert world.dead_letters.published == []
    assert errors == [], "no heartbeat ended in an exception"
    assert room_left(world.document) >= 0


def test_progress_that_no_longer_fits_is_left_out_and_the_lease_is_still_renewed() -> None:
    """Filled before the first step's progress: no progress is written, every heartbeat still renews the
    lease (before, each one was refused and ended its thread in an exception, and the lease lapsed)."""
    world = World()
    world.model.steps, world.model.step_s = 15, 0.02
    leases: list[object] = []
    app_fills_during_the_run(world, 0, also=lambda document: leases.append(document["leaseExpiresAt"]))
    hook, errors = threading.excepthook, uncaught_thread_errors()
    try:
        world.deliver()
    finally:
        threading.excepthook = hook
    assert errors == [], "no heartbeat ended in an exception"
    assert world.sessions.progress_writes == []
    assert world.document["progress"]["step"] == 0, "as the claim wrote it"
    assert world.document["leaseExpiresAt"] > leases[0]


def test_a_failure_in_a_full_session_is_recorded_with_its_sentence_cut_to_the_room_left() -> None:
    world = World()
    sentence = "the model refused the input: " + "the prompt names a dog " * 100
    world.model.fail_with = PermanentJobError(ErrorCode.MODEL_REJECTED_INPUT, sentence)
    app_fills_during_the_run(world, 120)
    outcome = world.deliver()
    assert outcome.kind is OutcomeKind.FAILED
    assert world.document["status"] == "failed"
    error = world.document["error"]
    assert error["code"] == "model_rejected_input"
    assert error["message"].startswith("the model refused the input: the prompt names a dog")
    assert error["message"].endswith("…")
    assert len(error["message"]) < len(sentence)
    assert world.acked == [True]
    assert world.dead_letters.published == []
    assert 0 <= room_left(world.document) < 8


def test_a_give_back_in_a_full_session_is_a_retry_not_a_dead_letter() -> None:
    """Triton away: the job goes back to queued for its next delivery, its reason cut to the room left."""
    world = World()
    world.model.fail_with = TritonUnavailableError("triton: connection refused " + "(details) " * 200)
    app_fills_during_the_run(world, 40)
    outcome = world.deliver()
    assert outcome.kind is OutcomeKind.RETRY
    assert world.document["status"] == "queued"
    assert world.document["error"]["code"] == "retrying"
    assert world.document["error"]["message"].startswith("triton: connection refused")
    assert world.acked == [False]
    assert world.dead_letters.published == []


def test_a_done_record_with_no_room_left_is_written_as_the_result_alone() -> None:
    """The whole record does not fit: the result's paths, size, seed and format do, and the job is done."""
    world = World()
    app_fills_during_the_run(world, 300)
    outcome = world.deliver(prompt="p" * 4000)
    assert outcome.kind is OutcomeKind.DONE, outcome.reason
    assert world.document["status"] == "done"
    assert world.document["result"]["paths"]["edited"] == f"{PREFIX}/edited.png"
    assert set(world.document["result"]) == {"paths", "width", "height", "seed", "format"}
    assert "model" not in world.document
    assert world.acked == [True]


def test_a_record_that_fits_is_written_whole() -> None:
    world = World()
    app_fills_during_the_run(world, 20_000)
    outcome = world.deliver(prompt="p" * 4000)
    assert outcome.kind is OutcomeKind.DONE
    assert world.document["model"]["prompt"] == "p" * 4000
    assert "encoding" in world.document["result"]
    assert world.document["claimId"]


def test_a_sentence_is_cut_between_characters_within_the_room_left() -> None:
    document: dict[str, Any] = {"status": "processing", "claimId": "c1", "owner": "bridge-a"}
    for room in range(40, 80):
        fill(document, room)
        sentence = "le chien 🐶 a mangé le chapeau; " * 20
        update = sessions.finish(
            document,
            "c1",
            datetime.now(UTC),
            JobStatus.FAILED,
            error_fields(ErrorCode.CANCELLED, sentence),
            path=DOCUMENT,
        )
        assert update is not None
        message = update["error"]["message"]
        assert sentence.startswith(message.removesuffix("…"))
        assert room_left({**document, **update}) >= 0
        kept = message.removesuffix("…")
        longer = kept + sentence[len(kept)] + "…"
        error = {**update["error"], "message": longer}
        assert room_left({**document, **update, "error": error}) < 0, "nothing more would have fitted"
