"""The session document's state machine, as pure functions of the document as read (the adapter writes the
answer only if nobody wrote in between: fluxfill.bridge.adapters.compare_and_set).

Both the Firestore adapter and the unit tests' in-memory store apply these, so the rules live in one place:
a terminal status is never left; a live lease is respected whoever holds it (the same bridge included: a
second delivery of a running job is never claimed twice); every claim gets a fresh `claimId`, a fencing token,
and heartbeat, release and finish act only for the current one; attempts are limited at claim time.
"""

import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from fluxfill.bridge.contract import RETRYING, TERMINAL_STATUSES, JobStatus, SessionField
from fluxfill.bridge.errors import RetryCause
from fluxfill.bridge.ports import Claim, ClaimKind, Heartbeat
from fluxfill.inpaint.contract import MAX_PROMPT_BYTES

Document = Mapping[str, Any]
Update = dict[str, Any]

# Firestore's largest document, by its own size rules (document_bytes).
MAX_DOCUMENT_BYTES = 1_048_576
# Room a session document must have for what the bridge writes into it: the claim's fields and the final
# write's (the result, the model's values with a prompt of up to MAX_PROMPT_BYTES, timings, an error message),
# the document's name, and room to spare. A document the app filled beyond MAX_DOCUMENT_BYTES less this was
# claimed and run, and then its final write was refused: the session stayed `processing` for good (seen on the
# Firestore emulator, which refuses as production does).
BRIDGE_ROOM_BYTES = 16 * MAX_PROMPT_BYTES
# What of a write is kept when the document has no room for all of it (`fitted`): the status and its time, the
# lease, the error, the result, and the claim's own fields (cleared by a write that ends the claim). Left out:
# progress, the model's values, timings, when it finished.
_CLAIM_FIELDS = (SessionField.CLAIM_ID, SessionField.OWNER, SessionField.PROGRESS)
_KEPT_WHEN_FULL = frozenset(
    {
        SessionField.STATUS,
        SessionField.UPDATED_AT,
        SessionField.LEASE_EXPIRES_AT,
        SessionField.ERROR,
        SessionField.RESULT,
        SessionField.CLAIM_ID,
        SessionField.OWNER,
    }
)
# What of a done session's result the app needs to show it: its paths, size, seed and format.
_ESSENTIAL_RESULT = ("paths", "width", "height", "seed", "format")
# A heartbeat renews the lease once this share of it is spent (10 s of the default 60 s), or with progress
# to record; otherwise it only reads. Every write reaches each of the app's listeners on the session (a
# phone), and Firestore advises at most one sustained write a second to a document: renewed every second, a
# job waiting behind others in Triton's queue wrote its session 60 times a minute with nothing new in it.
LEASE_RENEWED_AFTER_SHARE = 1 / 6
# A message's publish time is Pub/Sub's clock and a document's create time Firestore's: a session document
# made this much later than its job's publication allows (the app's grace) is still taken as the job's own.
CLOCKS_APART_S = 2.0


def _status(document: Document | None) -> JobStatus | None:
    value = (document or {}).get(SessionField.STATUS)
    try:
        return JobStatus(value) if value is not None else None
    except ValueError:
        return None


def leased(document: Document, now: datetime) -> bool:
    """Whether a live claim holds the job: processing, with a lease that has not expired."""
    if _status(document) is not JobStatus.PROCESSING:
        return False
    expires = document.get(SessionField.LEASE_EXPIRES_AT)
    return isinstance(expires, datetime) and expires > now


def held_by(document: Document | None, claim_id: str) -> bool:
    """Whether `claim_id` is the job's current claim (processing under it)."""
    document = document or {}
    return _status(document) is JobStatus.PROCESSING and document.get(SessionField.CLAIM_ID) == claim_id


def _last_error(document: Document) -> str:
    error = document.get(SessionField.ERROR)
    return str(error.get("message", "")) if isinstance(error, Mapping) else ""


def whole_count(value: object) -> int:
    """A count the bridge wrote into the document (the claims so far, a step): a whole number of 0 or more;
    anything else the document holds (the app writes it too, an operator may edit it) counts as none, never
    as an exception on every delivery or command that reads it."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if not math.isfinite(value) or value != int(value):
        return 0
    return max(0, int(value))


def document_bytes(document: Document) -> int:
    """The size Firestore counts for a document's fields (its storage size rules): each field's name in
    UTF-8 plus one, and its value: a string's UTF-8 plus one, 8 for a number or a time, 1 for a boolean or
    null, a map's fields and an array's values summed; plus 32. The document's name is left to
    BRIDGE_ROOM_BYTES."""
    return 32 + _fields_bytes(document)


def _fields_bytes(fields: Mapping[str, Any]) -> int:
    return sum(len(str(name).encode()) + 1 + _value_bytes(value) for name, value in fields.items())


def _value_bytes(value: object) -> int:
    if isinstance(value, Mapping):
        return _fields_bytes(value)
    if isinstance(value, list | tuple):
        return sum(_value_bytes(item) for item in value)
    if isinstance(value, str):
        return len(value.encode()) + 1
    if isinstance(value, bytes):
        return len(value)
    if value is None or isinstance(value, bool):
        return 1
    # A number or a time; a geo point is 16, and a reference counts its path (rare in a session: the room
    # BRIDGE_ROOM_BYTES leaves covers it).
    return 8 if isinstance(value, int | float | datetime) else 16


def claim(
    document: Document | None,
    *,
    claim_id: str,
    owner: str,
    now: datetime,
    lease_s: float,
    message_id: str,
    max_attempts: int,
    job_id: str | None = None,
) -> tuple[Claim, Update | None]:
    """What a claim finds, and the fields to write (None: write nothing). `job_id`: the message's `jobId`;
    a document naming another job is another session's (ANOTHER_JOB), refused before any other rule, as a
    document made after the job (`remade`) is."""
    if document is None:
        return Claim(ClaimKind.NO_SESSION), None
    named = document.get(SessionField.JOB_ID)
    if job_id is not None and isinstance(named, str) and named != job_id:
        return Claim(ClaimKind.ANOTHER_JOB, session_job_id=named), None
    refused = _refused(document, now, max_attempts)
    if refused is not None:
        return refused, None
    attempts = whole_count(document.get(SessionField.ATTEMPT))
    # A session claimed before without a key was claimed by a bridge deployed before keys: its uploads carry
    # none, so it keeps none (None), and what lies at its results' paths is taken as it was then.
    result_key = result_key_of(document) or (None if claimed_before(document) else claim_id)
    update: Update = {
        SessionField.STATUS: JobStatus.PROCESSING.value,
        SessionField.CLAIM_ID: claim_id,
        SessionField.OWNER: owner,
        SessionField.LEASE_EXPIRES_AT: now + timedelta(seconds=lease_s),
        SessionField.ATTEMPT: attempts + 1,
        SessionField.MESSAGE_ID: message_id,
        SessionField.PROGRESS: {"step": 0, "total": None},
        SessionField.STARTED_AT: now,
        SessionField.UPDATED_AT: now,
    }
    if result_key is not None:
        update[SessionField.RESULT_KEY] = result_key
    claimed = Claim(
        ClaimKind.CLAIMED, attempts + 1, JobStatus.PROCESSING, claim_id=claim_id, result_key=result_key
    )
    return claimed, update


def latest_made(first_published: datetime | None, grace_s: float) -> datetime | None:
    """The latest time the session document of a job first published at `first_published` can have been
    made (None: not known): the app makes it before it publishes, or at most `grace_s` after (a write that
    lands late), and CLOCKS_APART_S more for two services' clocks."""
    if first_published is None:
        return None
    return first_published + timedelta(seconds=grace_s + CLOCKS_APART_S)


def remade(made: datetime | None, made_by: datetime | None) -> Claim | None:
    """A document made after `made_by` (latest_made) is not the job's session: the app deleted the job's
    session and made another under its id, whose own job runs it. Claimed, it would run the new photo with
    the deleted session's prompt, seed and steps. Refused (nothing written) before any other rule: the
    document's status, cancel request and attempts are another job's. None: a time unknown, or in time."""
    if made is None or made_by is None or made <= made_by:
        return None
    return Claim(ClaimKind.REMADE, session_made=made)


def claimed_before(document: Document) -> bool:
    """Whether the session's job was claimed before: attempts counted, or counted before a `fluxfill dlq
    replay` set them back to 0 (it records them under `replayed`)."""
    replayed = document.get(SessionField.REPLAYED)
    before_replay = replayed.get("previousAttempts") if isinstance(replayed, Mapping) else None
    return whole_count(document.get(SessionField.ATTEMPT)) > 0 or whole_count(before_replay) > 0


def result_key_of(document: Document) -> str:
    """The key the session's results carry, set by its first claim; "" before one (or when what is there is
    no key of ours: the app cannot write it, so only by hand)."""
    key = document.get(SessionField.RESULT_KEY)
    return key if isinstance(key, str) else ""


def _refused(document: Document, now: datetime, max_attempts: int) -> Claim | None:
    """Why the session's job may not be claimed now (ended, cancelled, running, exhausted, too large), or
    None."""
    status = _status(document)
    if status in TERMINAL_STATUSES:
        return Claim(ClaimKind.FINISHED, status=status)
    # An earlier run, no longer under a live claim, may have uploaded its results before it died: those are
    # the job's outcome, whatever refuses a claim since (a live run records its own).
    live = leased(document, now)
    before = claimed_before(document) and not live
    key = (result_key_of(document) or None) if before else None
    if document.get(SessionField.CANCEL_REQUESTED) is True:
        return Claim(ClaimKind.CANCEL_REQUESTED, status=status, claimed_before=before, result_key=key)
    attempts = whole_count(document.get(SessionField.ATTEMPT))
    if live:
        holder = str(document.get(SessionField.MESSAGE_ID) or "")
        return Claim(ClaimKind.BUSY, attempts, status, holder_message_id=holder)
    if attempts >= max_attempts:
        # Checked here, not only after a retryable error: a job that kills its bridge comes back unclaimed.
        return Claim(
            ClaimKind.EXHAUSTED,
            attempts,
            status,
            last_error=_last_error(document),
            claimed_before=before,
            result_key=key,
        )
    size = document_bytes(document)
    if size > MAX_DOCUMENT_BYTES - BRIDGE_ROOM_BYTES:
        return Claim(ClaimKind.TOO_LARGE, attempts, status, document_bytes=size)
    return None


def cancel_unclaimed(
    document: Document | None, now: datetime, fields: Mapping[str, Any], *, path: str
) -> Update | None:
    """The `cancelled` write (with `fields`, its error) of a session its app cancelled while its job waits in
    the queue, never claimed: made before the job's message comes, which then finds the job ended. None for
    any other session: running, ended, or claimed before (its message ends it, recording what an earlier
    run may have uploaded), or not queued as the app made it."""
    if document is None or document.get(SessionField.CANCEL_REQUESTED) is not True:
        return None
    if _status(document) is not JobStatus.QUEUED or claimed_before(document):
        return None
    return finish(document, None, now, JobStatus.CANCELLED, fields, path=path)


def heartbeat(
    document: Document | None,
    claim_id: str,
    now: datetime,
    lease_s: float,
    progress: tuple[int, int] | None,
    *,
    path: str,
) -> tuple[Heartbeat, Update | None]:
    """While `claim_id` is still the current claim: renew the lease and record `progress` (new progress since
    the last write, or None), or, with no progress and the lease renewed lately, write nothing
    (LEASE_RENEWED_AFTER_SHARE): the answer then comes from the read alone."""
    if document is None:
        return Heartbeat(cancel_requested=False, still_owner=False, session_gone=True), None
    cancel = document.get(SessionField.CANCEL_REQUESTED) is True
    if not held_by(document, claim_id):
        return Heartbeat(cancel_requested=cancel, still_owner=False), None
    if progress is None and not lease_renewal_due(document, now, lease_s):
        return Heartbeat(cancel_requested=cancel, still_owner=True), None
    update: Update = {
        SessionField.LEASE_EXPIRES_AT: now + timedelta(seconds=lease_s),
        SessionField.UPDATED_AT: now,
    }
    if progress is not None:
        update[SessionField.PROGRESS] = {"step": progress[0], "total": progress[1]}
    return Heartbeat(cancel_requested=cancel, still_owner=True, renewed=True), fitted(document, update, path)


def lease_renewal_due(document: Document, now: datetime, lease_s: float) -> bool:
    """Whether LEASE_RENEWED_AFTER_SHARE of the document's lease is spent (or it holds none we can read)."""
    expires = document.get(SessionField.LEASE_EXPIRES_AT)
    if not isinstance(expires, datetime):
        return True
    return expires - now <= timedelta(seconds=lease_s * (1 - LEASE_RENEWED_AFTER_SHARE))


def release(
    document: Document | None, claim_id: str, now: datetime, reason: str, cause: RetryCause, *, path: str
) -> Update | None:
    """Back to queued, lease cleared, so a redelivery is claimed at once; only by the current claim. The
    session's `error` says so for the app: code `retrying`, the reason and its cause."""
    current = document or {}
    if not held_by(current, claim_id):
        return None
    update: Update = {
        SessionField.STATUS: JobStatus.QUEUED.value,
        SessionField.OWNER: None,
        SessionField.CLAIM_ID: None,
        SessionField.LEASE_EXPIRES_AT: None,
        SessionField.ERROR: {"code": RETRYING, "message": reason, "cause": cause.value},
        SessionField.UPDATED_AT: now,
    }
    return fitted(current, update, path)


def finish(
    document: Document | None,
    claim_id: str | None,
    now: datetime,
    status: JobStatus,
    fields: Mapping[str, Any],
    *,
    path: str,
) -> Update | None:
    """The terminal write, or None when the document is terminal, or `claim_id` is not the current claim.

    Without a claim id (an invalid duplicate, an early cancel, an exhausted job) a job under a live lease is
    left to the bridge holding it. A missing document is never made: the app deleted the session, or never
    made it (a fabricated message).
    """
    if document is None:
        return None
    if _status(document) in TERMINAL_STATUSES:
        return None
    if claim_id is None and leased(document, now):
        return None
    if claim_id is not None and not held_by(document, claim_id):
        return None
    update: Update = {
        SessionField.STATUS: status.value,
        SessionField.LEASE_EXPIRES_AT: None,
        SessionField.FINISHED_AT: now,
        SessionField.UPDATED_AT: now,
        **{str(key): value for key, value in fields.items()},
    }
    if status is JobStatus.DONE:
        update[SessionField.ERROR] = None
    return fitted(document, update, path)


def name_bytes(path: str) -> int:
    """The size Firestore counts for a document's name: each collection and document id's UTF-8 plus one,
    and 16."""
    return 16 + sum(len(part.encode()) + 1 for part in path.split("/"))


def fitted(document: Document, update: Update, path: str) -> Update:
    """`update` as Firestore will take it: whole when the document stays within MAX_DOCUMENT_BYTES, else cut
    to what the app must see (`_KEPT_WHEN_FULL`): the app writes its own fields at any time, and may fill the
    document during a run past the room its claim found. Cut, a write that ends the claim clears the claim's
    fields to make room, nulls are written only over values, the result keeps what shows it, and the error
    its code and as much of its sentence as fits ("…" where it was cut). A cut update that still does not fit
    is refused by Firestore (a document filled to within about 200 bytes cannot take a result's paths)."""
    if _bytes_after(document, update, path) <= MAX_DOCUMENT_BYTES:
        return update
    cut = {name: value for name, value in update.items() if name in _KEPT_WHEN_FULL}
    if cut.get(SessionField.STATUS, JobStatus.PROCESSING.value) != JobStatus.PROCESSING.value:
        cut.update(dict.fromkeys(_CLAIM_FIELDS))
    cut = {name: value for name, value in cut.items() if value is not None or document.get(name) is not None}
    result = cut.get(SessionField.RESULT)
    if isinstance(result, Mapping):
        cut[SessionField.RESULT] = {key: result[key] for key in _ESSENTIAL_RESULT if key in result}
    error = cut.get(SessionField.ERROR)
    if isinstance(error, Mapping) and isinstance(error.get("message"), str):
        unsaid = {**cut, SessionField.ERROR: {**error, "message": ""}}
        room = MAX_DOCUMENT_BYTES - _bytes_after(document, unsaid, path)
        cut[SessionField.ERROR] = {**error, "message": _cut_to(error["message"], room)}
    return cut


def _bytes_after(document: Document, update: Update, path: str) -> int:
    return name_bytes(path) + document_bytes({**document, **update})


def _cut_to(text: str, room: int) -> str:
    """`text` within `room` bytes of UTF-8, ending in "…" where it was cut."""
    encoded = text.encode()
    if len(encoded) <= room:
        return text
    ellipsis = "…"
    if room < len(ellipsis.encode()):
        return ""
    return encoded[: room - len(ellipsis.encode())].decode(errors="ignore") + ellipsis
