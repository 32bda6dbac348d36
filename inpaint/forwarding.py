"""A side channel between flux_fill (the unary forwarder) and flux_fill_stream, for what BLS loses here.

In this server build, BLS cannot cancel an inner decoupled request, delivers inner errors as INTERNAL, and
drops an error response that follows progress responses. So for each forwarded run, the forwarder touches
a cancel flag that the streaming model checks after every step, and the streaming model leaves the error
(code and message) in a file the forwarder reads. Both models run on one host as one user.
"""

import json
import os
import re
import tempfile
import uuid
from pathlib import Path

_FORWARDED_ID = re.compile(r"fwd-[0-9a-f]{32}")


def channel_dir() -> Path:
    """Where flags live ($FLUXFILL_FORWARDING_DIR, else a folder in the system temp dir)."""
    configured = os.environ.get("FLUXFILL_FORWARDING_DIR")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "fluxfill-forwarding"


def new_forwarded_id() -> str:
    """A request id for a forwarded run; only ids of this form are ever used as file names."""
    return f"fwd-{uuid.uuid4().hex}"


def is_forwarded(request_id: str) -> bool:
    """Whether a request came from the forwarder."""
    return bool(_FORWARDED_ID.fullmatch(request_id))


def _path(request_id: str, suffix: str) -> Path:
    directory = channel_dir()
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{request_id}.{suffix}"


def request_cancel(request_id: str) -> None:
    """Ask the forwarded run with this id to stop at its next step."""
    if is_forwarded(request_id):
        _path(request_id, "cancel").touch()


def is_cancel_requested(request_id: str) -> bool:
    """Whether the forwarder asked this run to stop."""
    return is_forwarded(request_id) and _path(request_id, "cancel").exists()


def record_error(request_id: str, code: str, message: str) -> None:
    """Leave a forwarded run's error for the forwarder."""
    if is_forwarded(request_id):
        _path(request_id, "error").write_text(json.dumps({"code": code, "message": message}))


def take_error(request_id: str) -> tuple[str, str] | None:
    """The (code, message) a forwarded run ended with, if it recorded one."""
    path = _path(request_id, "error")
    try:
        recorded = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return str(recorded["code"]), str(recorded["message"])


def clear(request_id: str) -> None:
    """Remove whatever the run left behind."""
    if is_forwarded(request_id):
        for suffix in ("cancel", "error"):
            _path(request_id, suffix).unlink(missing_ok=True)
