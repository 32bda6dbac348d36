"""JSON log lines for Cloud Logging: `severity`, a timestamp, the job's bound ids, and no secrets."""

import logging
import re
import sys
from collections.abc import MutableMapping
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
