"""The job contract between the app and the bridge: message schema, storage layout, session document, codes.

The app (and `fluxfill submit/watch/cancel/dlq`) build on this module; it imports no Google or Triton code.
"""

import json
import re
from collections import Counter
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from fluxfill.inpaint.contract import MAX_SEED, prompt_problem

# A session id is the app's own (Firestore's auto ids are 20 characters): path-safe characters only, so an id
# cannot climb the tree.
ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
ID_CHARACTERS = "A-Z a-z 0-9 _ -"
# A user id is the app's auth uid. Firebase's own are 28 letters and digits, but a custom token carries
# another system's: Auth0's `auth0|5f7c...`, Cognito's `eu-west-1:...`, an e-mail address. Those characters
# too; never `/`, `.` or `..` (they would climb the tree), nor what Storage's names and globs take specially
# (`* ? [ ] #`), `%`, spaces or control characters.
USER_ID_PATTERN = r"^[A-Za-z0-9_\-.@|:+=]{1,128}$"
USER_ID_CHARACTERS = f"{ID_CHARACTERS} . @ | : + ="
# Firestore reserves document ids of this form (and refuses the whole path with InvalidArgument).
RESERVED_ID_PATTERN = r"__.*__"
MAX_STEPS = 100
# The Firestore database of the sessions: a project's default one, or a named one (Firestore's rule for its
# ids: 4-63 lower-case letters, digits and hyphens, a letter first, not ending in a hyphen).
DEFAULT_FIRESTORE_DATABASE = "(default)"
FIRESTORE_DATABASE_PATTERN = r"^(\(default\)|[a-z][a-z0-9-]{2,61}[a-z0-9])$"
# Service-wide job defaults and experiments (fluxfill.bridge.runtime_config; `fluxfill config show|set`).
DEFAULT_RUNTIME_CONFIG_DOCUMENT = "fluxfillConfig/runtime"
# One document per user with a running job: its claims' slots (fluxfill.bridge.user_slots).
DEFAULT_USER_SLOTS_COLLECTION = "fluxfillUserSlots"
# Jobs waiting for a slot of their user's: `{collection}/{userId}/jobs/{sessionId}` (fluxfill.bridge.parking).
DEFAULT_PARKED_JOBS_COLLECTION = "fluxfillParkedJobs"

# Storage object templates, filled with the validated ids only (never a path from the message).
DEFAULT_ORIGINAL_TEMPLATE = "users/{userId}/sessions/{sessionId}/original.*"
DEFAULT_MASK_TEMPLATE = "users/{userId}/sessions/{sessionId}/mask.png"
# The final `*` of the result's template is its extension: jpg, png or webp (fluxfill.bridge.result_image).
DEFAULT_EDITED_TEMPLATE = "users/{userId}/sessions/{sessionId}/edited.*"
# `result.format` of a done session, and the edited object's extension for it.
RESULT_EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}
DEFAULT_PREVIEW_TEMPLATE = "users/{userId}/sessions/{sessionId}/preview.jpg"
DEFAULT_SESSION_TEMPLATE = "users/{userId}/sessions/{sessionId}"
PREVIEW_MAX_SIDE = 512


class JobStatus(StrEnum):
    """`status` of a session document: queued -> processing -> done | failed | cancelled."""

    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED})


class ErrorCode(StrEnum):
    """`error.code` of a failed (or cancelled) session; each comes with a sentence in `error.message`."""

    MALFORMED_MESSAGE = "malformed_message"  # not standard UTF-8 JSON of an object (one copy of each key)
    INVALID_JOB = "invalid_job"  # a field missing, unknown or out of range
    ORIGINAL_MISSING = "original_missing"
    ORIGINAL_AMBIGUOUS = "original_ambiguous"  # more than one original.* object
    MASK_MISSING = "mask_missing"
    MASK_AMBIGUOUS = "mask_ambiguous"  # more than one object matches a mask template ending in `*`
    OBJECT_TOO_LARGE = "object_too_large"  # refused from its metadata, never downloaded
    OBJECT_CHANGED = "object_changed"  # replaced or deleted between its metadata and its download
    # not JPEG, PNG, WebP, HEIC or AVIF by its bytes, or a JPEG not of 8-bit samples, hierarchical, or of
    # more scans than any encoder writes (intake.MAX_JPEG_SCANS), or stored with a Content-Encoding (gzip)
    UNSUPPORTED_IMAGE_FORMAT = "unsupported_image_format"
    CORRUPT_IMAGE = "corrupt_image"
    IMAGE_TOO_MANY_PIXELS = "image_too_many_pixels"  # a decompression bomb or simply too large
    MASK_SIZE_MISMATCH = "mask_size_mismatch"
    MASK_EMPTY = "mask_empty"  # selects no pixel to repaint (none of at least MASK_THRESHOLD)
    MODEL_REJECTED_INPUT = "model_rejected_input"
    # an object that is no image where the result goes, or two edited images (results are written
    # create-only, never replacing one)
    RESULT_PATH_TAKEN = "result_path_taken"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELLED = "cancelled"
    RETRIES_EXHAUSTED = "retries_exhausted"


# `error.code` of a session given back for another attempt (status `queued` again) after one that failed for
# the service: no ErrorCode, since the job has not failed; `error.cause` says why (errors.RetryCause) and the
# job's end replaces the field.
RETRYING = "retrying"

# The failures that are the job's own (its message, its images, its parameters): the app's, or its user's, to
# fix; retrying or paging the on-call changes nothing. The others are a stop (cancelled, past the deadline) or
# the service's (attempts spent on parts that were unavailable). `fluxfill watch` exits by it, and a bridge's
# jobs counter carries it as its `fault` label, so the failure-rate alert pages for the service's alone.
INPUT_ERRORS = frozenset(ErrorCode) - {
    ErrorCode.DEADLINE_EXCEEDED,
    ErrorCode.CANCELLED,
    ErrorCode.RETRIES_EXHAUSTED,
}


class SessionField(StrEnum):
    """Field names of the session document (camelCase, as the app reads them)."""

    STATUS = "status"
    PROGRESS = "progress"  # {step, total}
    ATTEMPT = "attempt"  # claims so far
    OWNER = "owner"  # the bridge instance processing it (for people: claims are fenced by claimId)
    CLAIM_ID = "claimId"  # the current claim's fencing token: only its holder may renew, release or finish
    LEASE_EXPIRES_AT = "leaseExpiresAt"  # after this another bridge may claim it
    CANCEL_REQUESTED = "cancelRequested"  # written by the app: true asks the bridge to stop
    # Written by the app (optional): the id of the session's job, as its message's `jobId` names it; a job
    # naming another is not this session's (a deleted session's of the same id: sessions.claim).
    JOB_ID = "jobId"
    ERROR = "error"  # {code, message}
    RESULT = "result"  # {paths {edited, preview}, width, height, seed}
    TIMINGS = "timings"  # seconds per phase: queue, download, inference, upload, total
    # What produced the result: model, protocol, prompt, steps, guidance, seed, priority, experiment.
    MODEL = "model"
    MESSAGE_ID = "messageId"
    # The session's first claim's id, kept by every later claim: the bridge's result objects carry it
    # (RESULT_KEY_METADATA), so results another session of the same id left are not taken for this one's.
    RESULT_KEY = "resultKey"
    REPLAYED = "replayed"  # set by `fluxfill dlq replay`: {at, reason, previousError, previousAttempts}
    UPDATED_AT = "updatedAt"
    STARTED_AT = "startedAt"
    FINISHED_AT = "finishedAt"


# The session document's fields the app's users write: they create it queued, may ask to cancel, keep
# `updatedAt` too, and may name the session's job (`jobId`). The others are the bridge's alone:
# FIRESTORE_RULES refuses them to the app's users.
APP_FIELDS = frozenset(
    {SessionField.STATUS, SessionField.CANCEL_REQUESTED, SessionField.UPDATED_AT, SessionField.JOB_ID}
)
BRIDGE_FIELDS = frozenset(SessionField) - APP_FIELDS
# The Firestore security rules of the session documents (merged into the app's rules; the local emulators
# load them, so every test runs under them).
FIRESTORE_RULES = Path(__file__).with_name("firestore.rules")
# The Storage security rules of the sessions' objects (merged into the app's Storage rules).
STORAGE_RULES = Path(__file__).with_name("storage.rules")

# The custom metadata on the objects a job uploads that holds its session's RESULT_KEY.
RESULT_KEY_METADATA = "fluxfillResultKey"
# Attributes the bridge sets on a message it publishes to the dead-letter topic itself.
DEAD_LETTER_CODE_ATTRIBUTE = "fluxfillErrorCode"
DEAD_LETTER_REASON_ATTRIBUTE = "fluxfillErrorMessage"
# The id of the message a job was first delivered as, on the copies the bridge publishes of it: its dead
# letters, and its carried-over messages (fluxfill.bridge.carry_over), which claim the job under that id.
ORIGINAL_MESSAGE_ID_ATTRIBUTE = "fluxfillOriginalMessageId"
# How often a job's message was published anew by a bridge instead of given back on its last delivery.
CARRIED_OVER_ATTRIBUTE = "fluxfillCarriedOver"
# Priority lanes: a job's `priority`, and the topic and subscription it travels on.
URGENT_LANE = "urgent"
BULK_LANE = "bulk"
# Attributes of a parked job's message when it is published again (fluxfill.bridge.parking): when the job was
# first published (its queue time counts from then) and how often it was parked.
FIRST_PUBLISHED_ATTRIBUTE = "fluxfillFirstPublished"
DEFERRALS_ATTRIBUTE = "fluxfillDeferrals"


def firestore_id_allowed(value: str) -> bool:
    """Whether Firestore takes `value` as a document id: 1 to 1,500 bytes, no `/`, not `.`, `..`, `__*__`."""
    return (
        0 < len(value.encode()) <= 1500
        and "/" not in value
        and value not in {".", ".."}
        and re.fullmatch(RESERVED_ID_PATTERN, value) is None
    )


def id_problem(value: str, *, user: bool = False) -> str | None:
    """Why the contract refuses `value` as a session id (a user id when `user`), in a sentence that does not
    echo it (a hostile one stays out of logs and records); None when it takes it."""
    pattern, characters = (USER_ID_PATTERN, USER_ID_CHARACTERS) if user else (ID_PATTERN, ID_CHARACTERS)
    if re.fullmatch(pattern, value) is None:
        return f"an id is 1 to 128 of the characters {characters}"
    if value in {".", ".."}:
        return "ids . and .. would name another folder"
    if not firestore_id_allowed(value):
        return "ids of the form __name__ are reserved by Firestore"
    return None


def _id_check(*, user: bool) -> Callable[[str], str]:
    """The validator of a session id (a user id when `user`): raises `id_problem`'s sentence."""

    def check(value: str) -> str:
        problem = id_problem(value, user=user)
        if problem is not None:
            raise ValueError(problem)
        return value

    return check


def _sendable_prompt(value: str) -> str:
    problem = prompt_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


Identifier = Annotated[str, AfterValidator(_id_check(user=False))]
UserIdentifier = Annotated[str, AfterValidator(_id_check(user=True))]
Prompt = Annotated[str, AfterValidator(_sendable_prompt)]


class JobMessage(BaseModel):
    """The data of a Pub/Sub job message (JSON); anything else in it is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    userId: UserIdentifier  # noqa: N815 (the wire names are camelCase)
    sessionId: Identifier  # noqa: N815
    prompt: Prompt = ""
    steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    guidance: float | None = Field(default=None, ge=0.0, le=100.0)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    priority: Literal["urgent", "bulk"] = "bulk"
    # The app's id of this job, also written into its session document (SessionField.JOB_ID): a document
    # naming another job is not this job's session.
    jobId: Identifier | None = None  # noqa: N815

    def paths(self, template: str) -> str:
        """Fill a storage or document template with this job's ids."""
        return template.format(userId=self.userId, sessionId=self.sessionId)


class InvalidJobError(ValueError):
    """The message cannot be a job; `code` and a sentence say why; `ids` when they name one session document
    safely (`recordable_id`: valid ids, or ids the contract refuses for their characters alone), so that the
    refusal is recorded there for the app to see."""

    def __init__(self, code: ErrorCode, message: str, ids: tuple[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.ids = ids


def parse_job(data: bytes) -> JobMessage:
    """Validate a message's data; raises InvalidJobError with one sentence per bad field."""
    try:
        payload: Any = json.loads(
            data.decode("utf-8"), object_pairs_hook=_object_without_repeats, parse_constant=_no_constant
        )
    except (UnicodeDecodeError, _NotStandardJsonError) as error:
        raise InvalidJobError(
            ErrorCode.MALFORMED_MESSAGE, f"message data is not UTF-8 JSON: {error}"
        ) from None
    # json.loads raises these beyond JSONDecodeError: nesting deeper than the interpreter's stack, and an
    # integer of more digits than int() converts (4,300).
    except RecursionError:
        raise InvalidJobError(ErrorCode.MALFORMED_MESSAGE, "message data is nested too deeply") from None
    except ValueError as error:
        raise InvalidJobError(
            ErrorCode.MALFORMED_MESSAGE, f"message data is not UTF-8 JSON: {str(error)[:200]}"
        ) from None
    if not isinstance(payload, dict):
        raise InvalidJobError(
            ErrorCode.MALFORMED_MESSAGE, f"message data must be a JSON object, not {type(payload).__name__}"
        )
    try:
        return JobMessage.model_validate(payload)
    except ValidationError as error:
        raise InvalidJobError(ErrorCode.INVALID_JOB, _describe(error), _recordable_ids(payload)) from None


class _NotStandardJsonError(ValueError):
    """JSON that Python's parser takes but the standard (and the app's parsers) do not."""


def _object_without_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are all different: parsers disagree on which copy of a repeated key wins, so
    the app and the bridge could read one message as two different jobs."""
    payload = dict(pairs)
    if len(payload) < len(pairs):
        repeated = sorted(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
        raise _NotStandardJsonError(f"{', '.join(repeated)[:100]} given more than once")
    return payload


def _no_constant(name: str) -> Any:
    raise _NotStandardJsonError(f"{name} is not a finite number")


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in item["loc"]) or "message"
        problems.append(f"{field}: {item['msg']}")
    return "invalid job: " + "; ".join(problems)


def recordable_id(value: str) -> bool:
    """Whether an id, valid or not, names one session document safely: printable and without whitespace (no
    control sequence in a log or a terminal), at most 128 characters, and a Firestore document id (no '/',
    not . or ..: it cannot climb the tree). An app whose session ids are ISO times (`...T10:00:00.000Z`) or
    carry a '.' is refused, and its session must say why rather than stay queued."""
    return (
        0 < len(value) <= 128
        and value.isprintable()
        and not any(character.isspace() for character in value)
        and firestore_id_allowed(value)
    )


def _recordable_ids(payload: dict[str, Any]) -> tuple[str, str] | None:
    user, session = payload.get("userId"), payload.get("sessionId")
    if isinstance(user, str) and isinstance(session, str) and recordable_id(user) and recordable_id(session):
        return user, session
    return None
