"""Find a job's original or mask in the bucket, waiting a little for one that is not uploaded yet.

The contract says upload first, then publish; an app that publishes while its uploads still run (a Cloud
Function on the session document's creation, with the photo still on its way from the phone) would otherwise
see its job fail at once with `original_missing`. A missing object is looked for again once a second until
`upload_grace_s` after the job was first published: a job that waited in the queue longer than that has had
its time, and fails at once. Only a session the app made waits (the handler decides: a message for a session
nobody made must not hold a slot for the grace).
"""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from fluxfill.bridge.contract import ErrorCode
from fluxfill.bridge.errors import AmbiguousObjectError, JobCancelledError, PermanentJobError
from fluxfill.bridge.ports import ObjectInfo, ObjectStore

logger = structlog.get_logger(__name__)

# How often a missing object is looked for again while its job waits (one listing of the bucket each).
UPLOAD_POLL_S = 1.0


@dataclass(frozen=True)
class UploadWait:
    """Until when (monotonic) a missing object is waited for; `stop` (a cancel, the bridge's shutdown) ends
    the wait early. `grace_s` is the setting, for the refusal's sentence; `ended(what, outcome)` is told how
    each wait ended: `arrived`, `missing` or `stopped`."""

    until: float
    grace_s: float
    stop: threading.Event
    ended: Callable[[str, str], None] = lambda what, outcome: None


def locate(objects: ObjectStore, pattern: str, what: str, max_bytes: int, wait: UploadWait) -> ObjectInfo:
    """The original's or mask's metadata, to read it by; refused, unread, when over `max_bytes` or still
    missing when `wait` ends. Raises JobCancelledError when `wait.stop` is set while waiting."""
    info = _find(objects, pattern, what)
    if info is None and wait.until > time.monotonic():
        info = _wait_for(objects, pattern, what, wait)
    if info is None:
        missing = ErrorCode.ORIGINAL_MISSING if what == "original" else ErrorCode.MASK_MISSING
        within = (
            f"; it was not uploaded within {wait.grace_s:g} s of the job's publication"
            if wait.grace_s
            else ""
        )
        raise PermanentJobError(missing, f"the {what} {pattern} does not exist in the bucket{within}")
    if info.size > max_bytes:
        raise PermanentJobError(
            ErrorCode.OBJECT_TOO_LARGE,
            f"the {what} {info.path} is {info.size} bytes, more than the limit of {max_bytes}; "
            "it was not downloaded",
        )
    if info.content_encoding not in (None, "", "identity"):
        # Served inflated, an object is larger than the size checked: 50 KB of gzip are 50 MB of zeros. An
        # image is compressed already; the app's upload may set the encoding (Firebase's SDKs take it).
        raise PermanentJobError(
            ErrorCode.UNSUPPORTED_IMAGE_FORMAT,
            f"the {what} {info.path} is stored with Content-Encoding: {info.content_encoding}, compressed "
            "again; it was not downloaded (upload the image as it is)",
        )
    return info


def _find(objects: ObjectStore, pattern: str, what: str) -> ObjectInfo | None:
    try:
        return objects.find(pattern)
    except AmbiguousObjectError as error:
        # Two uploads of the photo, the second of another format (`original.jpg`, then `original.heic`): the
        # bridge cannot tell which one the user meant, and editing either may edit the wrong one.
        ambiguous = ErrorCode.ORIGINAL_AMBIGUOUS if what == "original" else ErrorCode.MASK_AMBIGUOUS
        raise PermanentJobError(
            ambiguous,
            f"the {what} is ambiguous: {error}; delete all but the one to edit, then publish the job again",
        ) from None


def _wait_for(objects: ObjectStore, pattern: str, what: str, wait: UploadWait) -> ObjectInfo | None:
    started = time.monotonic()
    logger.info("waiting for an upload", what=what, pattern=pattern, for_s=round(wait.until - started, 1))
    while (left := wait.until - time.monotonic()) > 0:
        if wait.stop.wait(min(UPLOAD_POLL_S, left)):
            wait.ended(what, "stopped")
            raise JobCancelledError(f"stopped while waiting for the {what} to be uploaded")
        info = _find(objects, pattern, what)
        if info is not None:
            logger.info("the upload arrived", what=what, waited_s=round(time.monotonic() - started, 1))
            wait.ended(what, "arrived")
            return info
    wait.ended(what, "missing")
    return None
