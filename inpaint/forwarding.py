"""A side channel between flux_fill (the unary forwarder) and flux_fill_stream, for what BLS loses here.

In this server build, BLS cannot cancel an inner decoupled request, delivers inner errors as INTERNAL, and
drops an error response that follows progress responses. So for each forwarded run, the forwarder opens the
run (a `pending` file), touches a cancel flag that the streaming model checks after every step, and the
streaming model leaves the error (code and message) in a file the forwarder reads and removes.

Both models run in one tritonserver as one user. The directory is private to that server: by default one per
tritonserver process ($TMPDIR/fluxfill-forwarding-<uid>-<server pid>: the stubs' parent), mode 0700, refused
if it is a link or someone else's; files are opened without following links. The streaming model records an
error only for a run the forwarder opened, so direct callers (whatever request id they send) leave nothing.
"""

import errno
import json
import os
import re
import stat
import tempfile
import uuid
from pathlib import Path

_FORWARDED_ID = re.compile(r"fwd-[0-9a-f]{32}")
_SUFFIXES = ("pending", "cancel", "error")


class ForwardingDirError(PermissionError):
    """The channel directory is not a private directory of this user."""


def channel_dir() -> Path:
    """Where flags live: $FLUXFILL_FORWARDING_DIR, else a private folder of this tritonserver process."""
    configured = os.environ.get("FLUXFILL_FORWARDING_DIR")
    if configured:
        return Path(configured)
    # The stubs of both models are children of the one tritonserver: its pid names the server.
    return Path(tempfile.gettempdir()) / f"fluxfill-forwarding-{os.getuid()}-{os.getppid()}"


def _private_dir() -> Path:
    directory = channel_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ForwardingDirError(f"{directory} is not a directory of this user (a link, or someone else's)")
    if info.st_mode & 0o077:
        os.chmod(directory, 0o700)
    return directory


def new_forwarded_id() -> str:
    """A request id for a forwarded run; only ids of this form are ever used as file names."""
    return f"fwd-{uuid.uuid4().hex}"


def is_forwarded(request_id: str) -> bool:
    """Whether a request id has the forwarder's form (a direct caller may copy it: see `is_open`)."""
    return bool(_FORWARDED_ID.fullmatch(request_id))


def _path(request_id: str, suffix: str) -> Path:
    return _private_dir() / f"{request_id}.{suffix}"


def _write(path: Path, text: str, exclusive: bool = False) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_EXCL if exclusive else os.O_TRUNC)
    descriptor = os.open(path, flags, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)


def _read(path: Path) -> str | None:
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:  # a link where our file should be: not ours to read
            return None
        raise
    with os.fdopen(descriptor) as file:
        return file.read()


def open_run(request_id: str) -> None:
    """The forwarder opens a run before sending it on: only open runs get error files."""
    if is_forwarded(request_id):
        _write(_path(request_id, "pending"), "", exclusive=True)


def is_open(request_id: str) -> bool:
    """Whether the forwarder opened this run (and has not cleared it yet)."""
    return is_forwarded(request_id) and os.path.lexists(_path(request_id, "pending"))


def request_cancel(request_id: str) -> None:
    """Ask the forwarded run with this id to stop at its next step."""
    if is_open(request_id):
        _write(_path(request_id, "cancel"), "")


def is_cancel_requested(request_id: str) -> bool:
    """Whether the forwarder asked this run to stop."""
    return is_forwarded(request_id) and _read(_path(request_id, "cancel")) is not None


def record_error(request_id: str, code: str, message: str) -> None:
    """Leave a forwarded run's error for the forwarder; nothing for a run the forwarder did not open."""
    if is_open(request_id):
        _write(_path(request_id, "error"), json.dumps({"code": code, "message": message}))


def take_error(request_id: str) -> tuple[str, str] | None:
    """The (code, message) a forwarded run ended with, if it recorded one."""
    if not is_forwarded(request_id):
        return None
    text = _read(_path(request_id, "error"))
    try:
        recorded = json.loads(text) if text is not None else None
        return (str(recorded["code"]), str(recorded["message"])) if recorded else None
    except (ValueError, KeyError, TypeError):
        return None


def clear(request_id: str) -> None:
    """Remove whatever the run left behind."""
    if is_forwarded(request_id):
        for suffix in _SUFFIXES:
            _path(request_id, suffix).unlink(missing_ok=True)
