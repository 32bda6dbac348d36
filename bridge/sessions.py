"""The session document's state machine, as pure functions of the document read inside a transaction.

Both the Firestore adapter and the unit tests' in-memory store apply these, so the rules live in one place:
a terminal status is never left, a live lease of another owner is respected, an expired one is taken over.
"""

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from fluxfill.bridge.contract import TERMINAL_STATUSES, JobStatus, SessionField
from fluxfill.bridge.ports import Claim, ClaimKind, Heartbeat

Document = Mapping[str, Any]
Update = dict[str, Any]


def _status(document: Document | None) -> JobStatus | None:
    value = (document or {}).get(SessionField.STATUS)
    try:
        return JobStatus(value) if value is not None else None
    except ValueError:
        return None


def _leased_by_other(document: Document, owner: str, now: datetime) -> bool:
    if _status(document) is not JobStatus.PROCESSING or document.get(SessionField.OWNER) == owner:
        return False
    expires = document.get(SessionField.LEASE_EXPIRES_AT)
    return isinstance(expires, datetime) and expires > now


def claim(
    document: Document | None, owner: str, now: datetime, lease_s: float, message_id: str
) -> tuple[Claim, Update | None]:
    """What a claim finds, and the fields to write (None: write nothing)."""
    status = _status(document)
    if status in TERMINAL_STATUSES:
        return Claim(ClaimKind.FINISHED, status=status), None
    current = document or {}
    if current.get(SessionField.CANCEL_REQUESTED) is True:
        return Claim(ClaimKind.CANCEL_REQUESTED, status=status), None
    if _leased_by_other(current, owner, now):
        return Claim(ClaimKind.BUSY, status=status), None
    attempt = int(current.get(SessionField.ATTEMPT) or 0) + 1
    update: Update = {
        SessionField.STATUS: JobStatus.PROCESSING.value,
        SessionField.OWNER: owner,
        SessionField.LEASE_EXPIRES_AT: now + timedelta(seconds=lease_s),
        SessionField.ATTEMPT: attempt,
        SessionField.MESSAGE_ID: message_id,
        SessionField.PROGRESS: {"step": 0, "total": None},
        SessionField.STARTED_AT: now,
        SessionField.UPDATED_AT: now,
    }
    return Claim(ClaimKind.CLAIMED, attempt=attempt, status=JobStatus.PROCESSING), update


def heartbeat(
    document: Document | None, owner: str, now: datetime, lease_s: float, progress: tuple[int, int] | None
) -> tuple[Heartbeat, Update | None]:
    """Renew our lease (and record progress) while the document is still ours and processing."""
    current = document or {}
    cancel = current.get(SessionField.CANCEL_REQUESTED) is True
    ours = _status(current) is JobStatus.PROCESSING and current.get(SessionField.OWNER) == owner
    if not ours:
        return Heartbeat(cancel_requested=cancel, still_owner=False), None
    update: Update = {
        SessionField.LEASE_EXPIRES_AT: now + timedelta(seconds=lease_s),
        SessionField.UPDATED_AT: now,
    }
    if progress is not None:
        update[SessionField.PROGRESS] = {"step": progress[0], "total": progress[1]}
    return Heartbeat(cancel_requested=cancel, still_owner=True), update


def release(document: Document | None, owner: str, now: datetime, reason: str) -> Update | None:
    """Back to queued, lease cleared, so a redelivery is claimed at once; only by the owner."""
    current = document or {}
    if _status(current) is not JobStatus.PROCESSING or current.get(SessionField.OWNER) != owner:
        return None
    return {
        SessionField.STATUS: JobStatus.QUEUED.value,
        SessionField.OWNER: None,
        SessionField.LEASE_EXPIRES_AT: None,
        SessionField.ERROR: {"code": "retrying", "message": reason},
        SessionField.UPDATED_AT: now,
    }


def finish(
    document: Document | None, owner: str | None, now: datetime, status: JobStatus, fields: Mapping[str, Any]
) -> Update | None:
    """The terminal write, or None when the document is already terminal or (with an owner) not ours."""
    current = document or {}
    if _status(current) in TERMINAL_STATUSES:
        return None
    # Without an owner (an invalid duplicate, an early cancel) a job another bridge runs is left to it.
    if owner is None and _leased_by_other(current, "", now):
        return None
    if owner is not None and (
        _status(current) is not JobStatus.PROCESSING or current.get(SessionField.OWNER) != owner
    ):
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
    return update
