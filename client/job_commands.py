"""`fluxfill submit | watch | cancel | dlq`: the job system as the app uses it, from a terminal."""

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fluxfill.bridge.contract import (
    FIRESTORE_DATABASE_PATTERN,
    INPUT_ERRORS,
    RETRYING,
    ErrorCode,
    JobStatus,
    SessionField,
    id_problem,
)
from fluxfill.bridge.sessions import MAX_DOCUMENT_BYTES, whole_count
from fluxfill.bridge.settings import BridgeSettings, likely_meant, variable
from fluxfill.client.cli_dlq import run_dlq
from fluxfill.client.cli_jobs import SETTING_VARIABLES, missing_setting
from fluxfill.client.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_STOPPED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    DeadlineExceededError,
    InvalidInputError,
    ServiceUnavailableError,
)
from fluxfill.client.images import MaskLike, checked_mask, mask_argument
from fluxfill.client.jobs import (
    JobSettings,
    JobSystem,
    SessionRef,
    bridge_templates,
    document_map,
    new_session_id,
    photo_upload,
    validated_job,
)
from fluxfill.client.prerequisites import CLOUD_SDK_VARIABLE, require_writable_folder
from fluxfill.client.progress import ProgressBar

logger = logging.getLogger(__name__)

# How `watch` exits for a failed job: the input's fault, the service's, or a stop.
_STOPPED_CODES = {ErrorCode.DEADLINE_EXCEEDED, ErrorCode.CANCELLED}
_UNAVAILABLE_CODES = {ErrorCode.RETRIES_EXHAUSTED}
_RESULT_KIND = re.compile(r"[a-z]+")
# The settings each command needs besides the project.
_NEEDS = {
    "submit": ("bucket", "topic"),
    "list": ("dead_letter_subscription",),
    "replay": ("dead_letter_subscription", "topic"),
    "fetch": ("bucket",),
    "show": ("document",),
    "set": ("document",),
}


def _system(args: argparse.Namespace) -> JobSystem:
    command = {"dlq": getattr(args, "dlq_command", ""), "config": getattr(args, "config_command", "")}.get(
        args.command, args.command
    )
    for name in ("project", *_NEEDS.get(command, ())):
        if not getattr(args, name):
            raise InvalidInputError(missing_setting(name))
    if not re.match(FIRESTORE_DATABASE_PATTERN, args.database):
        raise InvalidInputError(
            f"database {args.database!r} is not a Firestore database id: (default), or 4 to 63 of a-z 0-9 -, "
            "a letter first"
        )
    return JobSystem(
        JobSettings(
            project=args.project,
            bucket=getattr(args, "bucket", ""),
            topic=getattr(args, "topic", ""),
            urgent_topic=getattr(args, "urgent_topic", ""),
            dead_letter_subscription=getattr(args, "dead_letter_subscription", ""),
            database=args.database,
            templates=bridge_templates(),
        )
    )


def session_ids(args: argparse.Namespace) -> tuple[str, str]:
    """The user and session the arguments name; InvalidInputError for an id the job contract would refuse."""
    for what, value in (("user", args.user), ("session", args.session)):
        problem = None if value is None else id_problem(value, user=what == "user")
        if problem is not None:
            raise InvalidInputError(f"{what} id {value!r} is not valid: {problem}")
    return args.user, args.session or new_session_id()


def misspelt_variables(environ: Mapping[str, str]) -> list[str]:
    """Each `FLUXFILL_*` variable that nothing here reads but that looks like one the job commands or the
    bridge read, with that one: a misspelt FLUXFILL_FIRESTORE_DATABASE sent every command to the
    `(default)` database without a word. Others are left alone (the shell may hold the Triton image's, or
    another tool's)."""
    own = {*SETTING_VARIABLES.values(), "FLUXFILL_USER", CLOUD_SDK_VARIABLE}  # read as written
    bridge = {variable(name) for name in BridgeSettings.model_fields}  # read in any case (pydantic-settings)
    told = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith("FLUXFILL_") or name in own or upper in bridge:
            continue
        meant = likely_meant(upper, own | bridge, "FLUXFILL_")
        if meant is not None:
            told.append(f"{name} is set but read by nothing: did you mean {meant}?")
    return told


def run_job_command(args: argparse.Namespace) -> int:
    """Dispatch one job command."""
    for warning in misspelt_variables(os.environ):  # before a setting it would have given is missed
        logger.warning(warning)
    if args.command in ("dlq", "config"):
        jobs = _system(args)
        return _config(jobs, args) if args.command == "config" else run_dlq(jobs, args)
    ids = session_ids(args)  # ids are checked (and submit's new id drawn) before anything is read or uploaded
    jobs = _system(args)
    ref = jobs.ref(*ids)
    if args.command == "submit":
        return _submit(jobs, args, ref)
    if args.command == "watch":
        if args.interval <= 0 or (args.timeout is not None and args.timeout <= 0):
            raise InvalidInputError("--interval and --timeout must be positive")
        return _watch(jobs, ref, args.timeout, args.interval)
    if args.command == "fetch":
        return _fetch(jobs, ref, args.output_dir)
    status = jobs.request_cancel(ref)
    done = status in {JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED}
    sys.stdout.write(f"{ref.session}: already {status}\n" if done else f"{ref.session}: cancel requested\n")
    return EXIT_OK


def _submit(jobs: JobSystem, args: argparse.Namespace, ref: SessionRef) -> int:
    mask: MaskLike = mask_argument(args.mask)
    fields = {"prompt": args.prompt, "steps": args.steps, "guidance": args.guidance, "seed": args.seed}
    validated_job(ref, priority=args.priority, **fields)  # a bad field is named before any photo is decoded
    # The photo and the mask decoded once each: a phone's 200 MP photo takes seconds and a gigabyte a time.
    photo = photo_upload(Path(args.image))
    selected = checked_mask(mask, photo.height, photo.width, "submit", refuse_empty=True)
    jobs.submit(ref, photo, selected, priority=args.priority, **fields)
    sys.stdout.write(f"{ref.session}\n")
    return EXIT_OK


def _config(jobs: JobSystem, args: argparse.Namespace) -> int:
    """`config show`: the document as JSON; `config set FILE`: validated, then written whole."""
    from fluxfill.bridge.runtime_config import InvalidRuntimeConfigError, parse_runtime_config

    if args.config_command == "show":
        document = jobs.runtime_config(args.document)
        if document is None:
            sys.stderr.write(f"no document at {args.document}: jobs get the model's own defaults\n")
        sys.stdout.write(json.dumps(document or {}, indent=2, sort_keys=True) + "\n")
        return EXIT_OK
    try:
        # Read no further than a document can be long: a device or a file picked by mistake (/dev/zero was
        # read for good, into memory) is refused at that length; a pipe (/dev/stdin) still reads.
        with args.file.open("rb") as file:
            text = file.read(MAX_DOCUMENT_BYTES + 1)
        if len(text) > MAX_DOCUMENT_BYTES:
            raise InvalidInputError(
                f"{args.file}: longer than a Firestore document can be ({MAX_DOCUMENT_BYTES} bytes)"
            )
        fields = json.loads(text.decode())
    except FileNotFoundError:
        raise InvalidInputError(f"{args.file}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidInputError(f"{args.file}: not a JSON document ({error})") from None
    if not isinstance(fields, dict):
        raise InvalidInputError(f"{args.file}: the document must be a JSON object")
    try:
        parse_runtime_config(fields)
    except InvalidRuntimeConfigError as error:
        raise InvalidInputError(f"{args.file}: {error}; nothing was written") from None
    jobs.set_runtime_config(args.document, fields)
    sys.stdout.write(f"wrote {args.document}\n")
    return EXIT_OK


def _fetch(jobs: JobSystem, ref: SessionRef, output_dir: Path) -> int:
    """Download a finished session's results next to each other as SESSION-edited.EXT, SESSION-preview.EXT."""
    document = jobs.session(ref)
    if document is None:
        raise InvalidInputError(f"no session {ref.session} of user {ref.user} ({ref.document})")
    status = str(document.get(SessionField.STATUS.value, ""))
    if status in {JobStatus.FAILED, JobStatus.CANCELLED}:
        return _report(ref, status, document, "fetch")
    if status != JobStatus.DONE:
        raise InvalidInputError(
            f"{ref.session} is {status or 'not started'}: nothing to fetch yet (fluxfill watch {ref.session} "
            "waits for it)"
        )
    # Files are named by the kinds of result (edited, preview): a word, never a path of its own.
    result = document_map(document.get(SessionField.RESULT.value))
    paths = {
        kind: object_path
        for kind, object_path in document_map(result.get("paths")).items()
        if isinstance(object_path, str) and object_path and _RESULT_KIND.fullmatch(str(kind))
    }
    if not paths:
        raise InvalidInputError(f"{ref.session} is done, but its result names no objects to fetch")
    require_writable_folder(output_dir, f"--output-dir {output_dir}")
    for kind, object_path in sorted(paths.items()):
        target = output_dir / f"{ref.session}-{kind}{Path(object_path).suffix}"
        jobs.download(object_path, target)
        sys.stdout.write(f"{target}\n")
    return EXIT_OK


def _watch(jobs: JobSystem, ref: SessionRef, timeout: float | None, interval: float) -> int:
    deadline = None if timeout is None else time.monotonic() + timeout
    bar, last_status, last_step = ProgressBar(sys.stderr), None, 0
    while True:
        document = _read_within(jobs, ref, deadline, timeout, last_status)
        if document is None:
            raise InvalidInputError(f"no session {ref.session} of user {ref.user} ({ref.document})")
        status = str(document.get(SessionField.STATUS.value, ""))
        if status != last_status:
            bar.interrupt()
            attempt = document.get(SessionField.ATTEMPT.value)
            sys.stderr.write(
                f"{status}" + (f" (attempt {attempt})" if attempt else "") + _given_back(document) + "\n"
            )
            last_status = status
        progress = document_map(document.get(SessionField.PROGRESS.value))
        step, total = whole_count(progress.get("step")), whole_count(progress.get("total"))
        if status == JobStatus.PROCESSING and total and step > last_step:
            bar(step, total)
            last_step = step
        if status in {JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED}:
            return _report(ref, status, document, "watch")
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineExceededError(f"{ref.session} still {status} after {timeout:g} s")
        time.sleep(interval)


def _given_back(document: dict[str, Any]) -> str:
    """The end of a status line: why a job queued again was given back (the bridge's `retrying` error); empty
    for any other state."""
    error = document_map(document.get(SessionField.ERROR.value))
    if document.get(SessionField.STATUS.value) != JobStatus.QUEUED or error.get("code") != RETRYING:
        return ""
    message = " ".join(str(error.get("message", "")).split())[:300]
    return f": given back ({error.get('cause', 'no cause recorded')}): {message}"


def _read_within(
    jobs: JobSystem, ref: SessionRef, deadline: float | None, timeout: float | None, status: str | None
) -> dict[str, Any] | None:
    """The session document, read before the watch's deadline: a read that gets no answer (a half-open
    connection) took minutes, whatever --timeout said."""
    within = None if deadline is None else max(deadline - time.monotonic(), 0.1)
    try:
        return jobs.session(ref, timeout_s=within)
    except ServiceUnavailableError as error:
        if deadline is None or time.monotonic() < deadline:
            raise
        state = f"still {status}" if status else "not read"
        raise DeadlineExceededError(f"{ref.session} {state} after {timeout:g} s ({error})") from None


def _report(ref: SessionRef, status: str, document: dict[str, Any], command: str) -> int:
    if status == JobStatus.DONE:
        result = document_map(document.get(SessionField.RESULT.value))
        edited = document_map(result.get("paths")).get("edited", "")
        size = f"{result.get('width')}x{result.get('height')}"
        sys.stdout.write(f"{ref.session}: done: {edited} ({size}, seed {result.get('seed')})\n")
        return EXIT_OK
    error = document_map(document.get(SessionField.ERROR.value))
    code, message = str(error.get("code", "")), " ".join(str(error.get("message", "")).split())
    sys.stderr.write(f"fluxfill {command}: {ref.session} {status}: {code}: {message}\n")
    if status == JobStatus.CANCELLED or code in _STOPPED_CODES:
        return EXIT_STOPPED
    if code in _UNAVAILABLE_CODES:
        return EXIT_UNAVAILABLE
    return EXIT_USAGE if code in INPUT_ERRORS else EXIT_FAILED
