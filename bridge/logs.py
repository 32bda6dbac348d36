"""JSON log lines for Cloud Logging: `severity`, a timestamp, the job's bound ids, and no secrets."""

import logging
import re
import sys
import threading
from collections.abc import MutableMapping
from types import TracebackType
from typing import Any, TextIO

import structlog

# Values under keys like these never reach a log line, whatever a caller passes.
_SECRET_KEYS = re.compile(
    r"token|secret|password|authorization|credential|key_b64|private_key", re.IGNORECASE
)


def severity(_logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Cloud Logging reads the level from `severity` (DEBUG, INFO, WARNING, ERROR, CRITICAL)."""
    level = event.pop("level", method)
    event["severity"] = {"warn": "WARNING", "exception": "ERROR"}.get(level, str(level).upper())
    return event


def redact_secrets(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace the value of any secret-looking key."""
    for key in event:
        if _SECRET_KEYS.search(key):
            event[key] = "[redacted]"
    return event


PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    severity,
    redact_secrets,
    structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
    structlog.processors.format_exc_info,
    structlog.processors.EventRenamer("message"),
    structlog.processors.JSONRenderer(),
]


def configure_logging(level: str = "INFO", stream: TextIO = sys.stdout) -> None:
    """Configure structlog once for the process. The libraries' own logging (WARNING and up) and Python's
    warnings go to stderr as the same JSON lines: plain text reaches Cloud Logging without a severity, so
    the Pub/Sub client's ERROR would pass every severity filter and alert by, a traceback would be an entry
    a line, and Pillow's warning about a photo's corrupt EXIF would name no job."""
    structlog.configure(
        processors=PROCESSORS,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *PROCESSORS],
        )
    )
    root = logging.getLogger()
    if not root.handlers:  # as basicConfig: a host that configured logging keeps its own
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
    logging.captureWarnings(True)
    # What nobody caught (a bug) too, which Python prints as a bare traceback.
    sys.excepthook = _uncaught_in_main
    threading.excepthook = _uncaught_in_thread
    sys.unraisablehook = _unraisable


_uncaught = structlog.get_logger("fluxfill.bridge.uncaught")


def _uncaught_in_main(
    kind: type[BaseException], error: BaseException, traceback: TracebackType | None
) -> None:
    _uncaught.critical("uncaught exception: the bridge exits", exc_info=(kind, error, traceback))


def _uncaught_in_thread(hook: threading.ExceptHookArgs) -> None:
    if hook.exc_type is SystemExit:
        return  # as Python's own hook: a thread's way to end
    name = hook.thread.name if hook.thread is not None else None
    _uncaught.critical("a thread ended with an uncaught exception", thread=name, **_exception(hook))


def _unraisable(hook: Any) -> None:  # sys.UnraisableHookArgs
    try:
        what = repr(hook.object)[:300]
    except Exception:  # a broken object's repr: its type says enough
        what = f"a {type(hook.object).__name__}"
    _uncaught.error(f"{hook.err_msg or 'Exception ignored in'}: {what}", **_exception(hook))


def _exception(hook: Any) -> dict[str, Any]:
    """The hook's exception as a log call's exc_info (its type's name, when there is no exception object)."""
    if hook.exc_value is None:
        return {"exception": hook.exc_type.__name__}
    return {"exc_info": (hook.exc_type, hook.exc_value, hook.exc_traceback)}
