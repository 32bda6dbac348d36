"""Whatever arrives, the answer is a job, an image or a specific refusal: never another exception."""

import io
import json
import struct

from hypothesis import assume, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from fluxfill.bridge.contract import ErrorCode, InvalidJobError, JobMessage, parse_job
from fluxfill.bridge.errors import PermanentJobError
from fluxfill.bridge.handler import JobHandler
from fluxfill.bridge.intake import decode_mask, decode_photo
from fluxfill.bridge.metrics import BridgeMetrics
from fluxfill.bridge.outcome import Delivery, OutcomeKind
from fluxfill.bridge.settings import BridgeSettings
from tests.unit.bridge.fakes import FakeModel, FakeObjectStore, FakeSessionStore

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "userId": JSON | st.from_regex(r"[A-Za-z0-9_-]{1,8}", fullmatch=True),
        "sessionId": JSON | st.from_regex(r"[A-Za-z0-9_-]{1,8}", fullmatch=True),
        "prompt": JSON,
        "steps": JSON,
        "guidance": JSON,
        "seed": JSON,
        "priority": JSON | st.sampled_from(["urgent", "bulk"]),
    },
)


@given(
    st.binary(max_size=200)
    | JSON.map(lambda v: json.dumps(v).encode())
    | FIELDS.map(lambda v: json.dumps(v).encode())
)
@settings(max_examples=300, deadline=None)
def test_any_message_is_a_job_or_a_coded_refusal(data: bytes) -> None:
    result = parse_or_refusal(data)
    if not isinstance(result, JobMessage):
        code, sentence = result
        assert code in {ErrorCode.MALFORMED_MESSAGE, ErrorCode.INVALID_JOB}
        assert sentence


def parse_or_refusal(data: bytes) -> JobMessage | tuple[ErrorCode, str]:
    try:
        return parse_job(data)
    except InvalidJobError as error:
        return error.code, str(error)


def png_prefix() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


@given(st.binary(max_size=300), st.integers(min_value=0, max_value=80), st.booleans())
@settings(max_examples=300, deadline=None)
def test_any_bytes_are_an_image_or_a_coded_refusal(tail: bytes, keep: int, as_mask: bool) -> None:
    # Half-real files too: a valid PNG cut short and followed by noise.
    data = png_prefix()[:keep] + tail
    decode = decode_mask if as_mask else decode_photo
    try:
        decoded = decode(data, 1_000_000)
    except PermanentJobError as error:
        refusal = error.code
    else:
        refusal = None
        assert decoded.dtype.name == "uint8"
    assert refusal in {
        None,
        ErrorCode.UNSUPPORTED_IMAGE_FORMAT,
        ErrorCode.CORRUPT_IMAGE,
        ErrorCode.IMAGE_TOO_MANY_PIXELS,
    }


# Modes each format can hold, as phones, editors and scanners write them.
MODES_BY_FORMAT = {
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "WEBP": ["RGB", "RGBA"],
}
IMAGES = st.sampled_from([(f, m) for f, modes in MODES_BY_FORMAT.items() for m in modes])


@given(
    IMAGES,
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=0, max_value=2**32 - 1),
)
@settings(max_examples=200, deadline=None)
def test_any_valid_image_decodes_upright_at_its_size(
    image_kind: tuple[str, str], width: int, height: int, orientation: int, seed: int
) -> None:
    data = encoded_image(image_kind, width, height, seed, orientation)
    # EXIF orientations 5 to 8 turn the picture a quarter: width and height swap.
    upright = (width, height) if orientation >= 5 else (height, width)
    photo = decode_photo(data, 1_000_000)
    mask = decode_mask(data, 1_000_000)
    assert photo.shape == (*upright, 3)
    assert photo.dtype.name == "uint8"
    assert mask.shape == upright
    assert mask.dtype.name == "uint8"


def random_bytes(seed: int, count: int) -> bytes:
    return bytes((seed >> (index % 32) ^ index * 2654435761) & 0xFF for index in range(count))


UPLOADS = st.one_of(
    st.binary(max_size=200),
    st.tuples(IMAGES, st.integers(1, 48), st.integers(1, 48), st.integers(0, 2**32 - 1)).map(
        lambda args: encoded_image(*args)
    ),
)


PREFIX = "users/u1/sessions/s1"
JOB = json.dumps({"userId": "u1", "sessionId": "s1", "steps": 1}).encode()


def handler_over(objects: dict[str, bytes]) -> tuple[JobHandler, FakeSessionStore]:
    """A job handler over these uploads, a one-step fake model and its session store (the app's queued
    session document in it)."""
    sessions = FakeSessionStore({PREFIX: {"status": "queued"}})
    # What the uploads hold is tested here; a mask that is never uploaded fails at once (its wait for a late
    # upload: tests/unit/bridge/test_uploads.py).
    quick = {"progress_interval_s": 0.01, "upload_grace_s": 0.0}
    handler = JobHandler(
        BridgeSettings(project="p", subscription="s", bucket="b", instance_id="a", **quick),
        FakeObjectStore(objects),
        sessions,
        FakeModel(steps=1),
        BridgeMetrics(),
    )
    return handler, sessions


@given(UPLOADS, UPLOADS | st.none(), st.binary(max_size=120) | FIELDS.map(lambda v: json.dumps(v).encode()))
@example(b"", None, b'{"userId": "0", "sessionId": "0"}')  # a job of a session nobody made (found in CI)
@settings(max_examples=150, deadline=None)
def test_any_job_through_the_handler_ends_done_or_refused_with_a_code(
    original: bytes, mask: bytes | None, extra: bytes
) -> None:
    """Random uploads and messages through the whole handler: a terminal outcome, never a retry or a crash (a
    random message may name another session, which nobody made: orphaned)."""
    objects = {f"{PREFIX}/original.png": original}
    if mask is not None:
        objects[f"{PREFIX}/mask.png"] = mask
    handler, sessions = handler_over(objects)
    for data in (JOB, extra):
        outcome = handler.handle(Delivery(data, "m1"))
        assert outcome.kind in {
            OutcomeKind.DONE,
            OutcomeKind.FAILED,
            OutcomeKind.DEAD_LETTER,
            OutcomeKind.DUPLICATE,
            OutcomeKind.ORPHANED,
        }
        if outcome.kind in {OutcomeKind.FAILED, OutcomeKind.DEAD_LETTER}:
            assert outcome.code is not None
            assert outcome.reason
    assert set(sessions.documents) == {PREFIX}, "no session is made for a message that names another"
    document = sessions.documents[PREFIX]
    event(f"{document['status']} {(document.get('error') or {}).get('code', '')}")
    assert document["status"] in {"done", "failed"}
    if document["status"] == "failed":
        assert ErrorCode(document["error"]["code"])
        assert document["error"]["message"]


def encoded_image(
    image_kind: tuple[str, str], width: int, height: int, seed: int, orientation: int | None = None
) -> bytes:
    """A noise picture in that (format, mode), with an EXIF orientation when one is given."""
    fmt, mode = image_kind
    noise = Image.frombytes("L", (width, height), random_bytes(seed, width * height))
    image = noise.convert(mode) if mode != "I;16" else noise.convert("I").convert("I;16")
    buffer = io.BytesIO()
    if orientation is None:
        image.save(buffer, format=fmt)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(buffer, format=fmt, exif=exif)
    return buffer.getvalue()


# EXIF tags phones and editors write (orientation, resolution, make and model, dates, the sub-directories,
# GPS, the thumbnail's), each with any TIFF field type and a small count: Pillow reads some such EXIF and
# cannot write it again, or fails its own open on it (fluxfill.bridge.exif_fallback, stale_metadata).
EXIF_TAGS = [0x0112, 0x011A, 0x011B, 0x0128, 0x010E, 0x010F, 0x0110, 0x0131, 0x0132, 0x8769, 0x8825, 0x9003,
             0x829A, 0x927C, 0xA002, 0x0001, 0x0002, 0x0201, 0x0202]  # fmt: skip
EXIF_ENTRIES = st.lists(
    st.tuples(
        st.sampled_from(EXIF_TAGS),
        st.sampled_from([1, 2, 3, 4, 5, 7, 10, 13]),  # field type (13 is outside TIFF 6)
        st.sampled_from([0, 1, 1, 2, 8]),  # count
        st.binary(min_size=4, max_size=4),  # the value, or where a longer one is (see tiff_exif)
    ),
    max_size=6,
)
FIELD_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}


def tiff_exif(entries: list[tuple[int, int, int, bytes]], little: bool, tail: bytes) -> bytes:
    """ "Exif\\0\\0" and one TIFF directory of these entries; values longer than 4 bytes point into `tail`."""
    order = "<" if little else ">"
    tail_at = 8 + 2 + 12 * len(entries) + 4
    body = b"".join(
        struct.pack(order + "HHI", tag, kind, count)
        + (value if FIELD_SIZES.get(kind, 1) * count <= 4 else struct.pack(order + "I", tail_at))
        for tag, kind, count, value in entries
    )
    header = (b"II*\x00" if little else b"MM\x00*") + struct.pack(order + "IH", 8, len(entries))
    return b"Exif\x00\x00" + header + body + bytes(4) + tail


@given(
    EXIF_ENTRIES,
    st.booleans(),
    st.binary(min_size=16, max_size=64),
    st.sampled_from(["JPEG", "PNG", "WEBP", "HEIF", "AVIF"]),
)
@settings(max_examples=150, deadline=None)
def test_a_photo_with_any_exif_is_edited(
    entries: list[tuple[int, int, int, bytes]], little: bool, tail: bytes, kind: str
) -> None:
    """Metadata is never a reason to fail a photo whose pixels decode: square, so any orientation fits."""
    exif = tiff_exif(entries, little, tail)
    buffer = io.BytesIO()
    try:
        Image.new("RGB", (32, 32), (90, 120, 30)).save(buffer, format=kind, exif=exif)
    except Exception:
        assume(False)
    mask = io.BytesIO()
    Image.new("L", (32, 32), 255).save(mask, format="PNG")
    handler, sessions = handler_over(
        {f"{PREFIX}/original.img": buffer.getvalue(), f"{PREFIX}/mask.png": mask.getvalue()}
    )
    outcome = handler.handle(Delivery(JOB, "m1"))
    assert outcome.kind is OutcomeKind.DONE, (outcome, sessions.documents[PREFIX].get("error"))
