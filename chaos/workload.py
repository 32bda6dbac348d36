"""The job mix of a run: valid jobs, duplicates, poison messages and corrupt images, each with its outcome.

Each planned job says what must become of it, so the invariants can be checked per job afterwards:
`status`/`code` of its session document (None: the message has no usable ids, so no document) and whether the
bridge must dead-letter its message (with `code`).
"""

import io
import json
import random
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt
from PIL import Image

PHOTO_SIZE = (96, 128)  # height, width: small, so Storage and PNG coding stay cheap
# A REMADE job's deleted session's job has the seed of its index plus this: a run of it shows in the result.
DELETED_SEED_OFFSET = 1_000_000


class Kind(StrEnum):
    """What a planned message is."""

    VALID = "valid"
    DUPLICATE = "duplicate"  # a valid job published twice
    MALFORMED_JSON = "malformed_json"
    UNKNOWN_FIELD = "unknown_field"
    BAD_IDS = "bad_ids"  # ids that break the path rules
    MISSING_OBJECT = "missing_object"
    CORRUPT_IMAGE = "corrupt_image"
    # Published before its photo and mask are uploaded (an app's function that publishes on the session's
    # creation while the phone still uploads): the bridge waits for them (upload_grace_s).
    LATE_UPLOAD = "late_upload"
    # Published before its session document is written (the app's write queued offline by its SDK while a
    # function publishes): the bridge looks for it again until upload_grace_s after the publication.
    LATE_DOCUMENT = "late_document"
    # Its session deleted by the app (the document; the uploads kept) before a bridge takes the job: it runs
    # nothing and the session is never made again, whatever redeliveries and restarts bring.
    DELETED = "deleted"
    # Its session deleted by the app before a bridge took its job, and made again under its id (the same
    # photo and mask) with a new job (another seed) past the fleet's grace: the deleted session's job, still
    # in Pub/Sub, never runs on it; the new one runs once.
    REMADE = "remade"
    # Its user cancels it (`cancelRequested`, as the app does) at a moment after its publication: while it is
    # queued, parked, waiting for a slot or running, or once it is done. It ends `cancelled` (nothing of its
    # result kept), or `done` when the cancel came after its result; never failed, never both.
    CANCELLED = "cancelled"


# Shares of the mix; what is left over is valid jobs.
POISON_SHARES = {
    Kind.DUPLICATE: 0.15,
    Kind.MALFORMED_JSON: 0.05,
    Kind.UNKNOWN_FIELD: 0.05,
    Kind.BAD_IDS: 0.05,
    Kind.MISSING_OBJECT: 0.05,
    Kind.CORRUPT_IMAGE: 0.05,
    Kind.LATE_UPLOAD: 0.05,
    Kind.LATE_DOCUMENT: 0.05,
    Kind.DELETED: 0.05,
    Kind.REMADE: 0.05,
    Kind.CANCELLED: 0.05,
}
# A cancelled job's cancel is written this long after its publication, at most (uniformly spread): in the
# runs' queues that reaches jobs queued, running and done.
CANCEL_WITHIN_S = 30.0


@dataclass(frozen=True)
class Expectation:
    """What must become of a planned job."""

    status: str | None  # the session's terminal status; None: no session document (nor result) may exist
    code: str | None  # error.code of a failed session, or the dead letter's code
    dead_letter: bool  # the bridge must publish it to the dead-letter topic


EXPECTED = {
    Kind.VALID: Expectation("done", None, dead_letter=False),
    Kind.DUPLICATE: Expectation("done", None, dead_letter=False),
    Kind.MALFORMED_JSON: Expectation(None, "malformed_message", dead_letter=True),
    Kind.UNKNOWN_FIELD: Expectation("failed", "invalid_job", dead_letter=True),
    Kind.BAD_IDS: Expectation(None, "invalid_job", dead_letter=True),
    Kind.MISSING_OBJECT: Expectation("failed", "original_missing", dead_letter=False),
    Kind.CORRUPT_IMAGE: Expectation("failed", "corrupt_image", dead_letter=False),
    Kind.LATE_UPLOAD: Expectation("done", None, dead_letter=False),
    Kind.LATE_DOCUMENT: Expectation("done", None, dead_letter=False),
    Kind.DELETED: Expectation(None, None, dead_letter=False),
    Kind.REMADE: Expectation("done", None, dead_letter=False),
    # Or done, when the cancel came after the result (invariants: a cancelled job ends once).
    Kind.CANCELLED: Expectation("cancelled", "cancelled", dead_letter=False),
}


@dataclass(frozen=True)
class PlannedJob:
    """One job of the run: its message(s), the objects to upload first, and what must happen."""

    key: str  # unique within the run: the session id, or a tag for messages without ids
    kind: Kind
    user: str
    session: str
    data: bytes
    copies: int  # times the message is published
    original: bytes | None
    mask: bytes | None
    earlier: bytes | None = None  # REMADE: the deleted session's job, published first (`data` is the new one)
    cancel_after_s: float | None = None  # CANCELLED: its cancel is written this long after its publication

    @property
    def expectation(self) -> Expectation:
        return EXPECTED[self.kind]


def encode(array: npt.NDArray[np.uint8], kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=kind)
    return buffer.getvalue()


def images(rng: random.Random) -> tuple[bytes, bytes]:
    """A random photo (JPEG) and a box mask (PNG) of PHOTO_SIZE."""
    height, width = PHOTO_SIZE
    pixels = np.random.default_rng(rng.getrandbits(32)).integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), np.uint8)
    top, left = rng.randrange(0, height // 2), rng.randrange(0, width // 2)
    mask[top : top + height // 3, left : left + width // 3] = 255
    return encode(pixels, "JPEG"), encode(mask)


def plan(count: int, seed: int, steps: int = 4) -> list[PlannedJob]:
    """`count` jobs in a seeded, shuffled mix (every kind at least once)."""
    rng = random.Random(seed)  # noqa: S311 (a reproducible test plan, not cryptography)
    kinds = [kind for kind, share in POISON_SHARES.items() for _ in range(max(1, round(count * share)))]
    kinds += [Kind.VALID] * max(1, count - len(kinds))
    rng.shuffle(kinds)
    return [_job(index, kind, rng, steps) for index, kind in enumerate(kinds)]


def _job(index: int, kind: Kind, rng: random.Random, steps: int) -> PlannedJob:
    user, session = f"u{index % 7}", f"s{seed_tag(rng)}{index:05d}"
    message: dict[str, object] = {"userId": user, "sessionId": session, "steps": steps, "seed": index}
    original: bytes | None
    original, mask = images(rng)
    if kind is Kind.UNKNOWN_FIELD:
        message["negativePrompt"] = "not in the contract"
    if kind is Kind.BAD_IDS:
        message["userId"] = f"../u{index}"
        user = ""
    if kind is Kind.MISSING_OBJECT:
        original = None
    if kind is Kind.CORRUPT_IMAGE and original is not None:
        original = original[: len(original) // 3]
    data = json.dumps(message).encode()
    earlier = json.dumps({**message, "seed": DELETED_SEED_OFFSET + index}).encode()
    if kind is Kind.MALFORMED_JSON:
        data = b'{"userId": "' + user.encode() + b'", "sessionId": ' + session.encode()
        user = ""
    return PlannedJob(
        key=session,
        kind=kind,
        user=user,
        session=session,
        data=data,
        copies=2 if kind is Kind.DUPLICATE else 1,
        original=original,
        mask=mask,
        earlier=earlier if kind is Kind.REMADE else None,
        cancel_after_s=rng.uniform(0.0, CANCEL_WITHIN_S) if kind is Kind.CANCELLED else None,
    )


def seed_tag(rng: random.Random) -> str:
    return f"{rng.getrandbits(16):04x}"
