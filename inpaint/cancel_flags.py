"""Cancellation across model processes: flux_fill asks flux_fill_stream to stop a forwarded run.

This server build's BLS response iterator cannot cancel the inner request, so the forwarder touches a
flag file named after the inner request's id, and the streaming model checks it after every step.
Both models run on one host as one user, so a directory is the simplest shared channel.
"""

import os
import re
import tempfile
import uuid
from pathlib import Path

_FORWARDED_ID = re.compile(r"fwd-[0-9a-f]{32}")


def cancel_dir() -> Path:
    """Where flags live ($FLUXFILL_CANCEL_DIR, else a folder in the system temp dir)."""
    configured = os.environ.get("FLUXFILL_CANCEL_DIR")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "fluxfill-cancel"


def new_forwarded_id() -> str:
    """A request id for a forwarded run; only ids of this form are ever looked up as flags."""
    return f"fwd-{uuid.uuid4().hex}"


def request_cancel(request_id: str) -> None:
    """Ask the run with this id to stop at its next step."""
    if _FORWARDED_ID.fullmatch(request_id):
        directory = cancel_dir()
        directory.mkdir(parents=True, exist_ok=True)
        (directory / request_id).touch()


def is_cancel_requested(request_id: str) -> bool:
    """Whether the forwarder asked this run to stop."""
    return bool(_FORWARDED_ID.fullmatch(request_id)) and (cancel_dir() / request_id).exists()


def clear(request_id: str) -> None:
    """Remove the flag once the run is over."""
    if _FORWARDED_ID.fullmatch(request_id):
        (cancel_dir() / request_id).unlink(missing_ok=True)
