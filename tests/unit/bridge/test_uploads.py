"""A job whose original or mask is not uploaded yet: waited for within `upload_grace_s` of its publication,
refused with its code after that."""

import threading

import pytest

from fluxfill.bridge import uploads
from fluxfill.bridge.contract import ErrorCode
from fluxfill.bridge.outcome import OutcomeKind
from tests.unit.bridge.world import PREFIX, World

ORIGINAL, MASK = f"{PREFIX}/original.png", f"{PREFIX}/mask.png"
PATTERNS = {ORIGINAL: f"{PREFIX}/original.*", MASK: MASK}
MISSING = [(ORIGINAL, ErrorCode.ORIGINAL_MISSING), (MASK, ErrorCode.MASK_MISSING)]


@pytest.fixture(autouse=True)
def _quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uploads, "UPLOAD_POLL_S", 0.05)


def held_back(world: World, path: str) -> bytes:
    """The object as uploaded, taken out of the bucket (not uploaded yet)."""
    return world.objects.objects.pop(path)


def upload_later(world: World, path: str, data: bytes, after_s: float) -> None:
    threading.Timer(after_s, lambda: world.objects.objects.__setitem__(path, data)).start()


@pytest.mark.parametrize(("path", "code"), MISSING)
def test_an_object_uploaded_after_the_job_was_published_is_waited_for(path: str, code: ErrorCode) -> None:
    world = World(upload_grace_s=30.0)
    upload_later(world, path, held_back(world, path), after_s=0.4)
    outcome = world.deliver()
    assert outcome.kind is OutcomeKind.DONE, outcome.reason
    assert world.document["status"] == "done"
    assert world.objects.finds.count(PATTERNS[path]) > 1  # looked for again until it was there
    assert len(world.model.calls) == 1
    what = "original" if path == ORIGINAL else "mask"
    assert (
        world.metrics.sample("fluxfill_bridge_upload_waits_total", {"what": what, "outcome": "arrived"}) == 1
    )


@pytest.mark.parametrize(("path", "code"), MISSING)
def test_a_job_published_longer_ago_than_the_grace_fails_at_once_with_its_code(
    path: str, code: ErrorCode
) -> None:
    world = World(upload_grace_s=30.0)
    held_back(world, path)
    outcome = world.deliver(published_s_ago=31.0)
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.code is code
    assert world.document["error"]["code"] == code.value
    assert "not uploaded within 30 s of the job's publication" in world.document["error"]["message"]
    assert world.objects.finds.count(PATTERNS[path]) == 1
    assert world.model.calls == []
    assert (
        world.metrics.sample("fluxfill_bridge_upload_waits_total", {"what": "original", "outcome": "missing"})
        == 0
    )


def test_a_job_waits_only_what_is_left_of_its_grace() -> None:
    world = World(upload_grace_s=30.0)
    held_back(world, ORIGINAL)
    outcome = world.deliver(published_s_ago=29.5)
    assert outcome.code is ErrorCode.ORIGINAL_MISSING
    waits = {"what": "original", "outcome": "missing"}
    assert world.metrics.sample("fluxfill_bridge_upload_waits_total", waits) == 1
    # Half a second of polls every 0.05 s (fewer on a busy machine), not thirty seconds' worth.
    assert 2 <= world.objects.finds.count(PATTERNS[ORIGINAL]) <= 12


def test_with_no_grace_a_missing_object_fails_at_once_without_a_word_of_waiting() -> None:
    world = World(upload_grace_s=0.0)
    held_back(world, ORIGINAL)
    outcome = world.deliver()
    assert outcome.code is ErrorCode.ORIGINAL_MISSING
    assert outcome.reason == f"the original {PATTERNS[ORIGINAL]} does not exist in the bucket"
    assert world.objects.finds == [PATTERNS[ORIGINAL]]


def test_with_both_objects_missing_the_original_is_named() -> None:
    """The mask is fetched beside the original once the original is found: a missing original is named."""
    world = World()
    held_back(world, ORIGINAL)
    held_back(world, MASK)
    assert world.deliver(published_s_ago=world.settings.upload_grace_s + 1).code is ErrorCode.ORIGINAL_MISSING


def test_a_cancel_while_waiting_for_the_upload_cancels_the_job() -> None:
    world = World(upload_grace_s=600.0)
    held_back(world, ORIGINAL)
    threading.Timer(0.3, lambda: world.document.update(cancelRequested=True)).start()
    outcome = world.deliver()
    assert outcome.kind is OutcomeKind.CANCELLED
    assert world.document["status"] == "cancelled"
    assert world.model.calls == []
    waits = {"what": "original", "outcome": "stopped"}
    assert world.metrics.sample("fluxfill_bridge_upload_waits_total", waits) == 1


def test_the_bridge_s_shutdown_while_waiting_gives_the_job_back() -> None:
    world = World(upload_grace_s=600.0)
    held_back(world, MASK)
    threading.Timer(0.3, world.handler.hard_stop.set).start()
    outcome = world.deliver()
    assert outcome.kind is OutcomeKind.RETRY
    assert "waiting for the mask" in outcome.reason
    assert world.document["status"] == "queued"


@pytest.mark.parametrize(
    ("original", "code"),
    [
        (b"\xff\xd8\xff\xe0 a JPEG cut off after its first marker", ErrorCode.CORRUPT_IMAGE),
        (b"GIF89a\x01\x00\x01\x00", ErrorCode.UNSUPPORTED_IMAGE_FORMAT),
    ],
)
def test_an_original_refused_while_the_mask_is_awaited_is_told_without_waiting_for_the_mask(
    original: bytes, code: ErrorCode
) -> None:
    """The mask is looked for beside the original's download: the original's refusal ends the job at once,
    not when the mask's wait for its upload runs out (the grace, holding the job's slot meanwhile)."""
    world = World(upload_grace_s=600.0)
    held_back(world, MASK)
    world.objects.objects[ORIGINAL] = original
    outcome = world.deliver()
    assert outcome.code is code, outcome.reason
    assert world.document["error"]["code"] == code.value
    stopped = {"what": "mask", "outcome": "stopped"}
    assert world.metrics.sample("fluxfill_bridge_upload_waits_total", stopped) == 1


@pytest.mark.parametrize(
    ("template", "second", "code"),
    [
        ("original_template", "original.heic", ErrorCode.ORIGINAL_AMBIGUOUS),
        ("mask_template", "mask.webp", ErrorCode.MASK_AMBIGUOUS),
    ],
)
def test_two_uploads_of_one_input_fail_the_job_naming_both(
    template: str, second: str, code: ErrorCode
) -> None:
    """The photo picked again and uploaded in another format beside the first: which one the user meant
    cannot be told. A mask's was told as the original's (`original_ambiguous`)."""
    name = second.partition(".")[0]
    world = World(**{template: f"users/{{userId}}/sessions/{{sessionId}}/{name}.*"})
    first = ORIGINAL if template == "original_template" else MASK
    world.objects.objects[f"{PREFIX}/{second}"] = world.objects.objects[first]
    world.objects.objects[f"{PREFIX}/{second}/thumbnail.png"] = b"in a folder of its own: not a match"
    outcome = world.deliver()
    assert (outcome.kind, outcome.code) == (OutcomeKind.FAILED, code)
    message = world.document["error"]["message"]
    assert first in message
    assert f"{PREFIX}/{second}" in message
    assert "delete all but the one to edit" in message
    assert "thumbnail" not in message
    assert world.model.calls == []
