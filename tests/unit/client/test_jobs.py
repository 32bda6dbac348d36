"""Job commands' pure parts: contract paths, job validation, upload encoding, watch's exit codes."""

import argparse
import io
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import numpy as np
import pillow_heif  # type: ignore[import-untyped]
import pytest
from PIL import Image

from fluxfill.bridge import intake
from fluxfill.bridge.contract import ErrorCode, parse_job
from fluxfill.bridge.errors import PermanentJobError
from fluxfill.bridge.settings import BridgeSettings
from fluxfill.client import images
from fluxfill.client import jobs as jobs_module
from fluxfill.client.cli import main
from fluxfill.client.cli_dlq import run_dlq
from fluxfill.client.errors import InvalidInputError
from fluxfill.client.job_commands import _fetch, _report, _submit, _watch
from fluxfill.client.jobs import (
    BridgeLimits,
    JobSettings,
    JobSystem,
    PhotoUpload,
    SessionRef,
    bridge_limits,
    bridge_templates,
    encode_mask,
    new_session_id,
    photo_upload,
    validated_job,
)

REF = SessionRef("u1", "s1")


def test_paths_follow_the_contract_templates() -> None:
    assert REF.document == "users/u1/sessions/s1"
    assert REF.object_path("original", "jpg") == "users/u1/sessions/s1/original.jpg"
    assert REF.object_path("mask", "png") == "users/u1/sessions/s1/mask.png"


# A deployment's own layout, set once for the bridge and the command line alike.
LAYOUT = {
    "ORIGINAL_TEMPLATE": "uploads/{userId}/{sessionId}/photo.*",
    "MASK_TEMPLATE": "uploads/{userId}/{sessionId}/mask.*",
    "SESSION_TEMPLATE": "apps/pets/owners/{userId}/edits/{sessionId}",
}


def test_the_command_lines_paths_follow_the_bridges_template_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before, `fluxfill submit` uploaded to the contract's default paths and `watch`, `cancel` and `dlq
    replay` read the default document whatever the bridge was told: a deployment with its own layout had
    every submitted job orphaned, and replay refused every dead letter as a deleted session."""
    for name, template in LAYOUT.items():
        monkeypatch.setenv(f"FLUXFILL_BRIDGE_{name}", template)
    jobs = JobSystem(JobSettings(project="p", templates=bridge_templates()))
    ref = jobs.ref("u1", "s1")
    assert ref.document == "apps/pets/owners/u1/edits/s1"
    assert ref.object_path("original", "heic") == "uploads/u1/s1/photo.heic"
    assert ref.object_path("mask", "png") == "uploads/u1/s1/mask.png"
    assert SessionRef("u1", "s1").document == "users/u1/sessions/s1", (
        "a library caller's default: the contract's"
    )


@pytest.mark.parametrize(
    ("name", "template", "said"),
    [
        (
            "SESSION_TEMPLATE",
            "users/{userId}/sessions",
            "FLUXFILL_BRIDGE_SESSION_TEMPLATE: 'users/{userId}/sessions'",
        ),
        ("EDITED_TEMPLATE", "users/{userId}/sessions/{sessionId}/original.*", "can name the same object"),
    ],
)
def test_a_template_the_bridge_would_refuse_is_refused_by_every_job_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str, template: str, said: str
) -> None:
    monkeypatch.setenv(f"FLUXFILL_BRIDGE_{name}", template)
    for command in (["watch", "s1"], ["cancel", "s1"], ["dlq", "list"]):
        extra = ["--dead-letter-subscription", "d"] if command[0] == "dlq" else ["--user", "u1"]
        assert main([*command, "--project", "p", *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"fluxfill {command[0]}: invalid bridge path template: "), err
        assert said in err


def test_session_ids_are_new_and_valid_for_the_contract() -> None:
    ids = {new_session_id() for _ in range(50)}
    assert len(ids) == 50
    for session in ids:
        validated_job(SessionRef("u1", session))


def test_the_published_job_is_what_the_bridge_parses() -> None:
    job = validated_job(REF, prompt="a hat", steps=3, guidance=None, seed=9, priority="urgent")
    parsed = parse_job(job.model_dump_json(exclude_none=True).encode())
    assert parsed == job
    assert (parsed.steps, parsed.guidance, parsed.seed, parsed.priority) == (3, None, 9, "urgent")


@pytest.mark.parametrize(
    ("ref", "fields", "message"),
    [
        (REF, {"steps": 500}, "steps: Input should be less than or equal to 100"),
        (REF, {"prompt": "x" * 5000}, "prompt: "),
        (SessionRef("__u__", "s1"), {}, "userId: "),
        (SessionRef("../etc", "s1"), {}, "userId: Value error, an id is 1 to 128 of the characters"),
    ],
)
def test_a_job_the_bridge_would_refuse_is_refused_here_first(
    ref: SessionRef, fields: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidInputError, match="invalid job: ") as caught:
        validated_job(ref, **fields)
    assert message in str(caught.value)


@pytest.mark.parametrize(("suffix", "extension"), [(".jpg", "jpg"), (".png", "png"), (".webp", "webp")])
def test_accepted_formats_are_uploaded_as_they_are(tmp_path: Path, suffix: str, extension: str) -> None:
    path = tmp_path / f"photo{suffix}"
    Image.new("RGB", (8, 6), (10, 20, 30)).save(path)
    assert photo_upload(path) == PhotoUpload(path.read_bytes(), extension, 8, 6)


@pytest.mark.parametrize(("kind", "extension"), [("HEIF", "heic"), ("AVIF", "avif")])
def test_phone_formats_the_bridge_reads_are_uploaded_as_they_are(
    tmp_path: Path, kind: str, extension: str
) -> None:
    """An iPhone's HEIC goes up as taken: the bridge reads HEIC and AVIF itself (and answers with a JPEG).

    In a fresh process: this one may have registered the HEIF codec through the bridge's own modules."""
    pillow_heif.register_heif_opener()
    path = tmp_path / f"photo.{extension}"
    Image.new("RGB", (16, 12), (10, 20, 30)).save(path, format=kind)
    check = (
        "import sys; from pathlib import Path; from fluxfill.client.jobs import photo_upload;"
        "path = Path(sys.argv[1]); upload = photo_upload(path);"
        "assert upload.data == path.read_bytes(), 'converted';"
        "print(upload.extension, upload.width, upload.height)"
    )
    done = subprocess.run(
        [sys.executable, "-c", check, str(path)], check=False, capture_output=True, text=True
    )
    assert (done.returncode, done.stdout.split()) == (0, [extension, "16", "12"]), done.stderr[-1500:]


def test_other_formats_are_uploaded_as_png(tmp_path: Path) -> None:
    path = tmp_path / "photo.bmp"
    Image.new("RGB", (8, 6), (10, 20, 30)).save(path)
    upload = photo_upload(path)
    assert (upload.extension, upload.width, upload.height) == ("png", 8, 6)
    assert Image.open(io.BytesIO(upload.data)).format == "PNG"


def bridge_refusal(data: bytes, max_pixels: int) -> ErrorCode | None:
    try:
        intake.check_header(data, "original photo", max_pixels)
    except PermanentJobError as error:
        return error.code
    return None


def test_a_photo_the_bridge_would_refuse_for_its_size_is_refused_before_it_is_read_or_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`submit` uploaded a photo over the bridge's limits, and the job then failed as object_too_large or
    image_too_many_pixels; a file of many gigabytes was read whole first (MemoryError, exit 1)."""
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 6), (10, 20, 30)).save(path)
    data = path.read_bytes()
    size = len(data)
    decoded: list[str] = []
    monkeypatch.setattr(Image.Image, "load", lambda image: decoded.append("load"))
    monkeypatch.setattr(Path, "read_bytes", lambda _: pytest.fail("the photo was read"))

    with pytest.raises(InvalidInputError) as too_large:
        photo_upload(path, BridgeLimits(max_object_bytes=size - 1, max_image_pixels=48))
    with pytest.raises(InvalidInputError) as too_many:
        photo_upload(path, BridgeLimits(max_object_bytes=size, max_image_pixels=47))

    assert decoded == []
    assert str(too_large.value) == (
        f"{path}: the photo is {size} bytes, more than the bridge takes ({size - 1}, "
        "FLUXFILL_BRIDGE_MAX_OBJECT_BYTES): it would fail the job as object_too_large"
    )
    assert str(too_many.value) == (
        f"{path}: the image is 8x6 = 48 pixels, more than the bridge takes (47, "
        "FLUXFILL_BRIDGE_MAX_IMAGE_PIXELS): it would fail the job as image_too_many_pixels"
    )
    # The bridge's own rule, at the same limits.
    assert bridge_refusal(data, 47) is ErrorCode.IMAGE_TOO_MANY_PIXELS
    assert bridge_refusal(data, 48) is None


def test_a_photo_at_the_bridges_limits_is_uploaded(tmp_path: Path) -> None:
    path = tmp_path / "photo.bmp"
    Image.new("RGB", (8, 6), (10, 20, 30)).save(path)
    png = photo_upload(path, BridgeLimits(max_object_bytes=10**6, max_image_pixels=48)).data

    assert photo_upload(path, BridgeLimits(max_object_bytes=len(png), max_image_pixels=48)).data == png
    with pytest.raises(InvalidInputError, match=r"the PNG this BMP is uploaded as is \d+ bytes, more than"):
        photo_upload(path, BridgeLimits(max_object_bytes=len(png) - 1, max_image_pixels=48))


def test_the_limits_are_the_bridges_own_variables_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    fields = BridgeSettings.model_fields
    monkeypatch.delenv("FLUXFILL_BRIDGE_MAX_OBJECT_BYTES", raising=False)
    monkeypatch.delenv("FLUXFILL_BRIDGE_MAX_IMAGE_PIXELS", raising=False)
    assert bridge_limits() == BridgeLimits(
        max_object_bytes=fields["max_object_bytes"].default,
        max_image_pixels=fields["max_image_pixels"].default,
    )
    monkeypatch.setenv("FLUXFILL_BRIDGE_MAX_OBJECT_BYTES", "1000")
    assert bridge_limits().max_object_bytes == 1000
    monkeypatch.setenv("FLUXFILL_BRIDGE_MAX_IMAGE_PIXELS", "0")
    with pytest.raises(
        InvalidInputError, match="FLUXFILL_BRIDGE_MAX_IMAGE_PIXELS: Input should be greater than 0"
    ):
        bridge_limits()


def test_submit_decodes_the_photo_and_the_mask_once_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A phone's 200 MP photo takes seconds and a gigabyte to decode: `fluxfill submit` decoded it three times
    (to check the mask, to check the photo, to size the uploaded mask)."""
    opened: list[str] = []
    real_open = images.open_image

    def counted(path: Any, *limit: Any) -> Image.Image:
        opened.append(Path(path).name)
        return real_open(path, *limit)

    monkeypatch.setattr(images, "open_image", counted)
    monkeypatch.setattr(jobs_module, "open_image", counted)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 8x6, upright 6x8: the mask is painted on the upright photo
    Image.new("RGB", (8, 6), (10, 20, 30)).save(tmp_path / "photo.jpg", exif=exif.tobytes())
    painted = np.zeros((8, 6), np.uint8)
    painted[2:4, 1:3] = 255
    Image.fromarray(painted).save(tmp_path / "mask.png")
    submitted: list[tuple[Any, ...]] = []

    class RecordingJobs:
        def submit(self, ref: SessionRef, photo: PhotoUpload, mask: Any, **fields: Any) -> None:
            submitted.append((ref, photo, mask))

    args = argparse.Namespace(
        image=str(tmp_path / "photo.jpg"),
        mask=str(tmp_path / "mask.png"),
        prompt="a hat",
        steps=None,
        guidance=None,
        seed=None,
        priority="bulk",
    )
    assert _submit(cast(JobSystem, RecordingJobs()), args, REF) == 0
    assert sorted(opened) == ["mask.png", "photo.jpg"]
    [(ref, photo, mask)] = submitted
    assert (ref, photo.extension, photo.width, photo.height) == (REF, "jpg", 6, 8)
    assert photo.data == (tmp_path / "photo.jpg").read_bytes()
    assert np.array_equal(mask, painted)


def test_the_uploaded_mask_is_a_png_the_photos_size(tmp_path: Path) -> None:
    mask = np.asarray(Image.open(io.BytesIO(encode_mask((2, 1, 3, 2), 6, 8))))
    assert mask.shape == (6, 8)
    assert mask.sum() == 255 * 6


class SessionsInTurn:
    """A JobSystem whose session document is each of these in turn, the last one for good."""

    def __init__(self, *documents: dict[str, Any]) -> None:
        self._documents = list(documents)

    def session(self, ref: SessionRef, timeout_s: float | None = None) -> dict[str, Any] | None:
        return self._documents.pop(0) if len(self._documents) > 1 else self._documents[0]

    def ref(self, user: str, session: str) -> SessionRef:
        return SessionRef(user, session)


def test_watch_tells_why_a_job_was_given_back(capsys: pytest.CaptureFixture[str]) -> None:
    """A job queued again after an attempt that failed for the service: the bridge's `retrying` error says
    why, and `watch` says it on the status line (before, "queued (attempt 1)" alone)."""
    given_back = {
        "status": "queued",
        "attempt": 1,
        "error": {"code": "retrying", "message": "triton: connection\nrefused", "cause": "triton"},
    }
    jobs = SessionsInTurn(
        {"status": "processing", "attempt": 1},
        given_back,
        {"status": "processing", "attempt": 2},
        {"status": "done", "attempt": 2, "result": {"paths": {"edited": "e.jpg"}, "width": 8, "height": 6}},
    )
    assert _watch(cast(JobSystem, jobs), REF, timeout=None, interval=0) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "processing (attempt 1)",
        "queued (attempt 1): given back (triton): triton: connection refused",
        "processing (attempt 2)",
        "done (attempt 2)",
    ]


def test_watch_tells_each_status_once_and_the_steps_as_they_come(capsys: pytest.CaptureFixture[str]) -> None:
    """The states a job passes through, as the app sees them; the job itself (tests/integration/client)
    may end before a watch starts."""
    running = {"status": "processing", "attempt": 1}
    jobs = SessionsInTurn(
        {"status": "queued"},
        running,
        {**running, "progress": {"step": 1, "total": 3}},
        {**running, "progress": {"step": 1, "total": 3}},
        {**running, "progress": {"step": 3, "total": 3}},
        {"status": "done", "attempt": 1, "result": {"paths": {"edited": "e.jpg"}, "width": 8, "height": 6}},
    )
    assert _watch(cast(JobSystem, jobs), REF, timeout=None, interval=0) == 0
    out, err = capsys.readouterr()
    lines = [line.split("  ")[0] for line in err.splitlines()]  # a step's line ends in its time
    assert lines == ["queued", "processing (attempt 1)", "step 1/3", "step 3/3", "done (attempt 1)"]
    assert out == "s1: done: e.jpg (8x6, seed None)\n"


class DownloadsRecorded(SessionsInTurn):
    """SessionsInTurn whose downloads are written down, each object's path as its file's text."""

    def download(self, object_path: str, target: Path) -> None:
        target.write_text(object_path)


# The bridge writes these fields; another shape left in them (an operator's hand, another version) made
# watch, fetch and their report fail with an unexpected error (AttributeError, TypeError, OverflowError).
ODD_FIELDS: list[dict[str, Any]] = [
    {"progress": "3 of 9", "result": ["e.jpg"], "error": "boom"},
    {"progress": {"step": "2", "total": float("inf")}, "result": {"paths": "e.jpg"}, "error": {"code": 3}},
    {"progress": {"step": float("nan"), "total": True}, "result": None, "error": None},
]


@pytest.mark.parametrize("odd", ODD_FIELDS)
def test_watch_reads_fields_of_another_shape_as_missing(
    odd: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    running = {"status": "processing", "attempt": 1, **odd}
    done = SessionsInTurn(running, {"status": "done", **odd})
    assert _watch(cast(JobSystem, done), REF, timeout=None, interval=0) == 0
    assert capsys.readouterr().out.startswith("s1: done: ")
    failed = SessionsInTurn(running, {"status": "failed", **odd})
    assert _watch(cast(JobSystem, failed), REF, timeout=None, interval=0) == 1


@pytest.mark.parametrize("odd", ODD_FIELDS)
def test_fetch_of_a_result_of_another_shape_says_it_names_nothing(
    odd: dict[str, Any], tmp_path: Path
) -> None:
    jobs = DownloadsRecorded({"status": "done", **odd})
    with pytest.raises(InvalidInputError, match=r"^s1 is done, but its result names no objects to fetch$"):
        _fetch(cast(JobSystem, jobs), REF, tmp_path)
    assert not list(tmp_path.iterdir())


def test_fetch_names_its_files_by_the_result_kinds_that_are_words(tmp_path: Path) -> None:
    paths = {"edited": "u/e.jpg", "preview": "u/p.jpg", "../up": "u/x.jpg", "Odd": "u/o.png", "thumb": 7}
    jobs = DownloadsRecorded({"status": "done", "result": {"paths": paths}})
    assert _fetch(cast(JobSystem, jobs), REF, tmp_path / "out") == 0
    written = {path.name: path.read_text() for path in (tmp_path / "out").iterdir()}
    assert written == {"s1-edited.jpg": "u/e.jpg", "s1-preview.jpg": "u/p.jpg"}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize(
    ("status", "code", "exit_code"),
    [
        ("failed", ErrorCode.MASK_MISSING, 2),
        ("failed", ErrorCode.MODEL_REJECTED_INPUT, 2),
        ("failed", ErrorCode.RETRIES_EXHAUSTED, 3),
        ("failed", ErrorCode.DEADLINE_EXCEEDED, 4),
        ("cancelled", ErrorCode.CANCELLED, 4),
        ("failed", "something_new", 1),
    ],
)
def test_watch_exits_by_why_the_job_ended(
    status: str, code: str, exit_code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _report(REF, status, {"error": {"code": code, "message": "why\nit ended"}}, "watch") == exit_code
    assert capsys.readouterr().err == f"fluxfill watch: s1 {status}: {code}: why it ended\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["watch", "s1"], "no project given: pass --project or set FLUXFILL_PROJECT"),
        (
            ["submit", "a.png", "b.png", "--project", "p"],
            "no bucket given: pass --bucket or set FLUXFILL_BUCKET",
        ),
        (
            ["dlq", "list", "--project", "p"],
            "pass --dead-letter-subscription or set FLUXFILL_DLQ_SUBSCRIPTION",
        ),
    ],
)
def test_missing_settings_exit_2_naming_their_flag_and_variable(
    argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for variable in (
        "FLUXFILL_PROJECT",
        "GOOGLE_CLOUD_PROJECT",
        "FLUXFILL_BUCKET",
        "FLUXFILL_DLQ_SUBSCRIPTION",
    ):
        monkeypatch.delenv(variable, raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fluxfill {argv[0]}: no ")
    assert err.endswith(f"{message}\n")
    assert err.count("\n") == 1


@pytest.mark.parametrize(("job_id", "replay_all"), [(None, False), ("abc", True)])
def test_replay_needs_exactly_one_of_an_id_or_all(job_id: str | None, replay_all: bool) -> None:
    args = argparse.Namespace(dlq_command="replay", id=job_id, all=replay_all)
    with pytest.raises(InvalidInputError, match="exactly one of"):
        run_dlq(JobSystem(JobSettings(project="p", dead_letter_subscription="d")), args)
