"""Act on the job system the way the app does: upload, create the session document, publish, read, cancel.

Everything about the job (message schema, storage paths, session fields and statuses) comes from
fluxfill.bridge.contract; this module only speaks to Google Cloud. Emulators are used when the usual
`*_EMULATOR_HOST` variables are set.
"""

import contextlib
import io
import json
import secrets
import string
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from google.api_core import exceptions as api
from google.auth import exceptions as auth
from PIL import Image
from pydantic import ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fluxfill.bridge import exif_fallback
from fluxfill.bridge.adapters.firestore_errors import CALL_TIMEOUT_S, bounded
from fluxfill.bridge.contract import (
    DEFAULT_FIRESTORE_DATABASE,
    TERMINAL_STATUSES,
    InvalidJobError,
    JobMessage,
    JobStatus,
    SessionField,
    parse_job,
)
from fluxfill.bridge.credentials import using_emulators
from fluxfill.bridge.intake import sniff_format
from fluxfill.bridge.model_rgb import DECODE_ERRORS
from fluxfill.bridge.path_templates import OBJECT_TEMPLATES, SESSION_TEMPLATE
from fluxfill.bridge.settings import (
    ENV_PREFIX,
    BridgeSettings,
    checked_layout,
    checked_template,
    settings_problems,
)
from fluxfill.client.errors import FluxFillError, InvalidInputError, ServiceUnavailableError
from fluxfill.client.images import MaskLike, PixelLimit, open_image, to_mask

if TYPE_CHECKING:  # google.cloud.firestore is imported when a command first needs it
    from fluxfill.bridge.adapters.compare_and_set import Decide

# Formats the bridge accepts for an original, by PIL's name, with the extension the app gives them.
# Uploaded as they are: what the bridge reads itself (fluxfill.bridge.intake.sniff_format).
ORIGINAL_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "HEIF": "heic", "AVIF": "avif"}
PUBLISH_TIMEOUT_S = 30.0
T = TypeVar("T")
_ID_ALPHABET = string.ascii_letters + string.digits
NO_CREDENTIALS = (
    "no credentials: set the *_EMULATOR_HOST variables (a local stack: fluxfill stack) "
    "or run gcloud auth application-default login"
)


def now() -> datetime:
    """The time written to documents (timezone-aware UTC, as the bridge writes it)."""
    return datetime.now(UTC)


def new_session_id() -> str:
    """A 20-character id like Firestore's auto ids."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(20))


def _the_bridges(name: str) -> Any:
    """The bridge's own setting of this name (its default, bounds and description), as a field."""
    return BridgeSettings.model_fields[name]


class BridgeTemplates(BaseSettings):
    """Where the bridge looks for a job's photo, mask and session document, and writes its results: the
    bridge's own path templates, from its FLUXFILL_BRIDGE_*_TEMPLATE variables (a deployment sets them once,
    for both), else the contract's defaults, under the bridge's checks."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    original_template: str = _the_bridges("original_template")
    mask_template: str = _the_bridges("mask_template")
    edited_template: str = _the_bridges("edited_template")
    preview_template: str = _the_bridges("preview_template")
    session_template: str = _the_bridges("session_template")

    @field_validator(*OBJECT_TEMPLATES, SESSION_TEMPLATE)
    @classmethod
    def _check_template(cls, template: str, info: ValidationInfo) -> str:
        return checked_template(template, info)

    @model_validator(mode="after")
    def _check_layout(self) -> "BridgeTemplates":
        return checked_layout(self)


# The contract's own templates, whatever the environment says (a library caller's default).
DEFAULT_TEMPLATES = BridgeTemplates.model_construct()


def bridge_templates() -> BridgeTemplates:
    """The bridge's templates as its variables set them here; InvalidInputError naming a bad one."""
    try:
        return BridgeTemplates()
    except ValidationError as error:
        raise InvalidInputError(f"invalid bridge path template: {settings_problems(error)}") from None


@dataclass(frozen=True)
class JobSettings:
    """Where the job system lives; the CLI fills it from flags and FLUXFILL_* variables."""

    project: str
    bucket: str = ""
    topic: str = ""
    dead_letter_subscription: str = ""
    urgent_topic: str = ""  # urgent jobs' topic; empty: they go to `topic` too
    database: str = DEFAULT_FIRESTORE_DATABASE  # the app's Firestore database, as the bridge's setting
    call_timeout_s: float = CALL_TIMEOUT_S  # each Firestore call's bound, its retries included
    templates: BridgeTemplates = DEFAULT_TEMPLATES  # the bridge's; the CLI reads them as the bridge does


@dataclass(frozen=True)
class SessionRef:
    """One user's session: its document's and objects' paths come of its ids and the bridge's templates."""

    user: str
    session: str
    templates: BridgeTemplates = DEFAULT_TEMPLATES

    @property
    def document(self) -> str:
        """The session document's path."""
        return self._filled(self.templates.session_template)

    def object_path(self, kind: Literal["original", "mask"], extension: str = "") -> str:
        """Where the job's `kind` of object (original, mask) goes; `extension` stands for a final `*`."""
        path = self._filled(getattr(self.templates, f"{kind}_template"))
        return path[:-1] + extension if path.endswith("*") else path

    def _filled(self, template: str) -> str:
        return template.format(userId=self.user, sessionId=self.session)


@contextmanager
def google_errors(action: str) -> Iterator[None]:
    """The boundary: Google API failures become client errors naming what was being done."""
    try:
        yield
    except auth.DefaultCredentialsError:
        raise InvalidInputError(NO_CREDENTIALS) from None
    except auth.GoogleAuthError as error:
        raise ServiceUnavailableError(f"cannot {action}: credentials refused ({error})") from None
    except api.NotFound as error:
        raise InvalidInputError(f"cannot {action}: not found ({error.message})") from None
    except (api.PermissionDenied, api.Unauthenticated) as error:
        hint = "check the project and your account"
        raise InvalidInputError(f"cannot {action}: {error.message} ({hint})") from None
    except (api.GoogleAPICallError, api.RetryError) as error:
        raise ServiceUnavailableError(f"cannot {action}: {error}", retryable=True) from None
    except (TimeoutError, ConnectionError) as error:
        raise ServiceUnavailableError(f"cannot {action}: {error}", retryable=True) from None


def _storage_bound() -> dict[str, Any]:
    """One Cloud Storage call's bound, the bridge's (google.cloud.storage is imported when first needed)."""
    from fluxfill.bridge.adapters.storage import bounded as storage_bound

    return storage_bound()


def validated_job(ref: SessionRef, **fields: Any) -> JobMessage:
    """The job message as the bridge will parse it; InvalidInputError naming every bad field."""
    payload = {
        "userId": ref.user,
        "sessionId": ref.session,
        **{k: v for k, v in fields.items() if v is not None},
    }
    try:
        return parse_job(json.dumps(payload).encode())
    except InvalidJobError as error:
        raise InvalidInputError(str(error)) from None


class BridgeLimits(BaseSettings):
    """What the bridge refuses of an upload, checked by `submit` before anything is uploaded: the bridge's own
    settings of these names, from its FLUXFILL_BRIDGE_* variables (a deployment sets them once, for both),
    else its defaults."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    max_object_bytes: int = _the_bridges("max_object_bytes")
    max_image_pixels: int = _the_bridges("max_image_pixels")

    def refuse_larger(self, path: Path, what: str, size: int) -> None:
        """InvalidInputError when `size` bytes of `what` are more than the bridge reads."""
        if size > self.max_object_bytes:
            raise InvalidInputError(
                f"{path}: {what} is {size} bytes, more than the bridge takes ({self.max_object_bytes}, "
                f"{ENV_PREFIX}MAX_OBJECT_BYTES): it would fail the job as object_too_large"
            )

    @property
    def pixels(self) -> PixelLimit:
        setting = f"{self.max_image_pixels}, {ENV_PREFIX}MAX_IMAGE_PIXELS"
        than = f"the bridge takes ({setting}): it would fail the job as image_too_many_pixels"
        return PixelLimit(self.max_image_pixels, than)


def bridge_limits() -> BridgeLimits:
    """The bridge's limits as its variables set them here; InvalidInputError naming a bad one."""
    try:
        return BridgeLimits()
    except ValidationError as error:
        raise InvalidInputError(f"invalid bridge limit: {settings_problems(error)}") from None


@dataclass(frozen=True)
class PhotoUpload:
    """A photo file as `JobSystem.submit` uploads it: its bytes and extension, and its upright size (what
    the mask must fit)."""

    data: bytes
    extension: str
    width: int
    height: int


def photo_upload(path: Path, limits: BridgeLimits | None = None) -> PhotoUpload:
    """The photo as uploaded: JPEG, PNG, WebP, HEIC and AVIF as they are, anything else as PNG. Refused as the
    bridge would refuse it (`limits`: bridge_limits() when not given), from its size and header, before it is
    read or decoded; decoded once (a 200 MP photo takes seconds), so a broken file is refused here and not by
    the bridge."""
    limits = limits or bridge_limits()
    fmt = _format_of(path)
    if fmt in ORIGINAL_FORMATS:
        limits.refuse_larger(path, "the photo", path.stat().st_size)
    image = open_image(path, limits.pixels)
    width, height = image.size
    if fmt in ORIGINAL_FORMATS:
        return PhotoUpload(path.read_bytes(), ORIGINAL_FORMATS[fmt], width, height)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    limits.refuse_larger(path, f"the PNG this {fmt or 'image'} is uploaded as", buffer.tell())
    return PhotoUpload(buffer.getvalue(), "png", width, height)


def _format_of(path: Path) -> str:
    """The image file's format: by its leading bytes for the formats uploaded as they are, as the bridge
    tells them (a PNG with a chunk Pillow refuses and the bridge reads is one, not a PNG made of it), else by
    Pillow; "" when it cannot be opened (open_image then says why)."""
    with contextlib.suppress(OSError), path.open("rb") as file:
        sniffed = sniff_format(file.read(4096))
        if sniffed is not None:
            return sniffed
    try:
        with exif_fallback.open_image(path) as header:
            return header.format or ""
    except (*DECODE_ERRORS, Image.DecompressionBombError):
        return ""


def encode_mask(mask: MaskLike, height: int, width: int) -> bytes:
    """The mask as the app uploads it: a PNG of the photo's upright size, white = repaint."""
    buffer = io.BytesIO()
    Image.fromarray(to_mask(mask, height, width)).save(buffer, format="PNG")
    return buffer.getvalue()


class JobSystem:
    """Google Cloud clients for one project, created on first use."""

    def __init__(self, settings: JobSettings) -> None:
        self.settings = settings
        self._clients: dict[str, Any] = {}

    def _credentials(self) -> Any:
        if using_emulators():
            from google.auth.credentials import AnonymousCredentials

            return AnonymousCredentials()  # type: ignore[no-untyped-call]
        return None  # Application Default Credentials

    def ref(self, user: str, session: str) -> SessionRef:
        """A session of these ids, under the bridge's templates as these settings hold them."""
        return SessionRef(user, session, self.settings.templates)

    def client(self, kind: str) -> Any:
        """The storage, firestore, publisher or subscriber client."""
        if kind not in self._clients:
            from google.cloud import firestore, storage  # type: ignore[attr-defined]

            from fluxfill.bridge.adapters.pubsub import publisher_client, subscriber_client

            project, credentials = self.settings.project, self._credentials()
            factories: dict[str, Callable[[], Any]] = {
                "storage": lambda: storage.Client(project=project, credentials=credentials),
                "firestore": lambda: firestore.Client(
                    project=project, credentials=credentials, database=self.settings.database
                ),
                "publisher": lambda: publisher_client(credentials),
                "subscriber": lambda: subscriber_client(credentials),
            }
            with google_errors(f"create the {kind} client"):
                self._clients[kind] = factories[kind]()
        return self._clients[kind]

    def submit(self, ref: SessionRef, photo: Path | PhotoUpload, mask: MaskLike, **fields: Any) -> JobMessage:
        """Upload photo (a file, or one `photo_upload` read) and mask, create the queued session document,
        publish the job.

        All or nothing where that can be known: when a step fails before the job is published (a missing
        bucket or topic, no permission), what the earlier steps made is deleted again and the error says so.
        Only a publish whose outcome is unknown (a timeout) leaves the session, and the error names it.
        """
        # The job's id, in its message and its session document: a session made again under the same id is
        # then never run by this job (SessionField.JOB_ID).
        job = validated_job(ref, **{"jobId": uuid.uuid4().hex, **fields})
        upload = photo if isinstance(photo, PhotoUpload) else photo_upload(photo)
        original, extension = upload.data, upload.extension
        mask_png = encode_mask(mask, upload.height, upload.width)
        self.require("bucket", "topic")
        made: list[str] = []
        try:
            bucket = self.client("storage").bucket(self.settings.bucket)
            with google_errors(f"upload to gs://{self.settings.bucket}"):
                original_path = ref.object_path("original", extension)
                content_type = Image.MIME.get(extension.upper().replace("JPG", "JPEG"), "image/png")
                bucket.blob(original_path).upload_from_string(
                    original, content_type=content_type, **_storage_bound()
                )
                made.append(original_path)
                mask_path = ref.object_path("mask", "png")
                bucket.blob(mask_path).upload_from_string(
                    mask_png, content_type="image/png", **_storage_bound()
                )
                made.append(mask_path)
            with google_errors(f"create {ref.document}"):
                session = {
                    SessionField.STATUS.value: JobStatus.QUEUED.value,
                    SessionField.UPDATED_AT.value: now(),
                    SessionField.JOB_ID.value: job.jobId,
                }
                self.client("firestore").document(ref.document).create(session, **self._bounded())
                made.append(ref.document)
            self.publish(job.model_dump_json(exclude_none=True).encode(), {}, job.priority)
        except ServiceUnavailableError as error:
            if ref.document in made:
                # A publish that timed out may have reached Pub/Sub: the session stays for the bridge.
                raise ServiceUnavailableError(
                    f"{error}; the job may have been published: session {ref.session} is kept "
                    f"(fluxfill watch {ref.session} shows whether it runs)",
                    retryable=error.retryable,
                ) from None
            raise type(error)(f"{error}; {self._undo(ref, made)}", retryable=error.retryable) from None
        except FluxFillError as error:
            raise type(error)(f"{error}; {self._undo(ref, made)}") from None
        return job

    def _undo(self, ref: SessionRef, made: list[str]) -> str:
        """Delete what a failed submit made; a sentence saying what was done."""
        if not made:
            return "nothing was created"
        left = []
        for name in reversed(made):
            try:
                if name == ref.document:
                    self.client("firestore").document(name).delete(**self._bounded())
                else:
                    self.client("storage").bucket(self.settings.bucket).blob(name).delete(**_storage_bound())
            except Exception:  # best effort: what is left is reported, not raised
                left.append(name)
        if left:
            return f"could not delete what it made: {', '.join(left)}"
        return f"removed what it had made ({len(made)} of {len(made)}): nothing is left behind"

    def download(self, object_path: str, target: Path) -> None:
        """Copy one object of the bucket to `target`, whole or not at all."""
        self.require("bucket")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        try:
            with google_errors(f"download gs://{self.settings.bucket}/{object_path}"):
                blob = self.client("storage").bucket(self.settings.bucket).blob(object_path)
                blob.download_to_filename(str(partial), **_storage_bound())
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)

    def publish(self, data: bytes, attributes: Mapping[str, str], priority: str = "bulk") -> str:
        """Publish to the jobs topic of `priority` (urgent: the urgent topic, when there is one) and wait
        for the message id."""
        from fluxfill.bridge.adapters.pubsub import publish_message

        self.require("topic")
        publisher = self.client("publisher")
        urgent = priority == "urgent" and self.settings.urgent_topic
        topic = publisher.topic_path(
            self.settings.project, self.settings.urgent_topic if urgent else self.settings.topic
        )
        with google_errors(f"publish to {topic}"):
            # Attributes are data: any name (`timeout`, `retry` ...) must reach Pub/Sub, not the call.
            return publish_message(publisher, topic, data, attributes, PUBLISH_TIMEOUT_S)

    def session(self, ref: SessionRef, timeout_s: float | None = None) -> dict[str, Any] | None:
        """The session document now, or None if there is none; read within `timeout_s` when given (and
        the call's own bound)."""
        with google_errors(f"read {ref.document}"):
            snapshot = self.client("firestore").document(ref.document).get(**self._bounded(timeout_s))
        return snapshot.to_dict() if snapshot.exists else None

    def request_cancel(self, ref: SessionRef) -> str:
        """Ask the bridge to stop, as the app does; returns the status found (InvalidInputError if none)."""

        def mark(document: Mapping[str, Any] | None, at: datetime) -> tuple[str, dict[str, Any] | None]:
            if document is None:
                raise InvalidInputError(f"no session {ref.session} of user {ref.user} ({ref.document})")
            status = str(document.get(SessionField.STATUS.value, ""))
            if status in TERMINAL_STATUSES:
                return status, None
            return status, {SessionField.CANCEL_REQUESTED.value: True, SessionField.UPDATED_AT.value: at}

        return self._change(ref, f"request cancellation of {ref.document}", mark)

    def requeue(self, ref: SessionRef, reason: str, job_id: str | None = None) -> str | None:
        """Start a session afresh for a replay; None when done, else why it was not (a live claim runs it, or
        it names a job other than `job_id`, the replayed job's: a session made again under its id since).

        Afresh means: queued, attempts back to 0, the old error cleared, no claim, and `replayed` recording
        when, why and what the previous error was. A done session is left as it is (a replay acks as a
        duplicate); a missing one is refused: the app deleted it, and the bridge runs no job without one.
        """
        from fluxfill.bridge.sessions import leased

        def reset(
            document: Mapping[str, Any] | None, at: datetime
        ) -> tuple[str | None, dict[str, Any] | None]:
            if document is None:
                return (
                    f"{ref.document} does not exist (the app deleted the session): it would run nothing",
                    None,
                )
            named = document.get(SessionField.JOB_ID.value)
            if job_id is not None and isinstance(named, str) and named != job_id:
                return (
                    f"{ref.document} names another job (jobId {named!r}; this one's is {job_id!r}): the app "
                    "made the session again under its id since, and the replay would run nothing",
                    None,
                )
            if document.get(SessionField.STATUS.value) == JobStatus.DONE.value:
                return None, None
            if leased(document, at):
                expires = document[SessionField.LEASE_EXPIRES_AT.value]
                return f"{ref.document} is processing under a live claim (until {expires.isoformat()})", None
            return None, {
                SessionField.STATUS.value: JobStatus.QUEUED.value,
                SessionField.ATTEMPT.value: 0,
                SessionField.ERROR.value: None,
                SessionField.CANCEL_REQUESTED.value: False,
                SessionField.OWNER.value: None,
                SessionField.CLAIM_ID.value: None,
                SessionField.LEASE_EXPIRES_AT.value: None,
                SessionField.REPLAYED.value: {
                    "at": at,
                    "reason": reason,
                    "previousError": document.get(SessionField.ERROR.value),
                    "previousAttempts": document.get(SessionField.ATTEMPT.value),
                },
                SessionField.UPDATED_AT.value: at,
            }

        return self._change(ref, f"requeue {ref.document}", reset)

    def _change(self, ref: SessionRef, action: str, decide: "Decide[T]") -> T:
        """`decide`'s answer, its write landed on the session document as it decided on it (compare-and-set,
        as the bridge writes: a transaction's first call cannot be bounded in time, and when it failed the
        client raised "no transaction ID" in place of its error)."""
        from fluxfill.bridge.adapters.compare_and_set import compare_and_set
        from fluxfill.bridge.errors import SessionRefusedError, SessionTransientError

        with google_errors(action):
            try:
                answer, _ = compare_and_set(
                    self.client("firestore"),
                    ref.document,
                    action,
                    decide,
                    now,
                    call_timeout_s=self.settings.call_timeout_s,
                )
            except (SessionTransientError, SessionRefusedError) as error:
                # The bridge's boundary replaced Google's error, which says what kind of failure it is.
                if isinstance(error.__context__, api.GoogleAPICallError | api.RetryError):
                    raise error.__context__ from None
                raise ServiceUnavailableError(f"cannot {action}: {error}", retryable=True) from None
        return answer

    def runtime_config(self, path: str) -> dict[str, Any] | None:
        """The runtime config document's fields, None when there is none."""
        with google_errors(f"read {path}"):
            snapshot = self.client("firestore").document(path).get(**self._bounded())
        return snapshot.to_dict() if snapshot.exists else None

    def set_runtime_config(self, path: str, fields: Mapping[str, Any]) -> None:
        """Replace the runtime config document (validated by the caller)."""
        with google_errors(f"write {path}"):
            self.client("firestore").document(path).set(dict(fields), **self._bounded())

    def _bounded(self, within_s: float | None = None) -> dict[str, Any]:
        """One Firestore call's bound: the settings', or `within_s` when that is sooner."""
        limit = self.settings.call_timeout_s
        return bounded(limit if within_s is None else min(limit, within_s))

    def require(self, *names: str) -> None:
        """Raise InvalidInputError for the first of these settings that is empty."""
        for name in names:
            if not getattr(self.settings, name):
                raise InvalidInputError(f"no {name.replace('_', ' ')} configured")


def document_map(value: object) -> dict[str, Any]:
    """A map field of a session document, or an empty one: the bridge writes these fields, but another
    shape left there (an operator's hand, another version) is read as missing, not failed on."""
    return value if isinstance(value, dict) else {}
