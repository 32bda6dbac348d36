"""Triton's output as Cloud Logging reads it: one JSON line per entry, with a severity.

Cloud Run gives a plain text line on stdout or stderr no severity, and GKE's agent gives every stderr line
ERROR. tritonserver logs everything to stderr in glog's format (`E1205 16:43:06.884936 24802
model_lifecycle.cc:642] "failed to load ..."`): a model that failed to load passed every severity filter
and alert by on Cloud Run, and on GKE every routine INFO line was an error. The Python-backend stubs write
beside it (their prints, Python's warnings and tracebacks, faulthandler's dump of a hung stub, the stall
watchdog's line).

So each glog line becomes an entry of its own severity (I, W, E, F: INFO, WARNING, ERROR, CRITICAL), its
quoted message unquoted, its source file and line where Cloud Logging shows them. Any other line begins an
entry of its own: a Python warning is WARNING, anything else on stderr ERROR, on stdout INFO; the lines that
follow it within `GROUP_WINDOW_S` join it (a traceback written a line at a time, a warning's source line), as
a table joins the empty glog message before it (Triton's startup tables). A line that is already a JSON
entry passes as it is.

The standard library only: it runs in fluxfill.client.triton_supervisor, before anything else in the image.
"""

import codecs
import dataclasses
import json
import os
import re
import select
import threading
from dataclasses import dataclass, field
from typing import TextIO

SEVERITIES = {"I": "INFO", "W": "WARNING", "E": "ERROR", "F": "CRITICAL"}
# Lines a writer puts out one after another (a traceback, a table) arrive within this of each other.
GROUP_WINDOW_S = 0.05
# An entry is written once it holds this many lines or characters; a line without a newline, once this long.
# Cloud Logging takes entries up to 256 KB, and JSON's escapes write a character in up to six.
MAX_ENTRY_LINES = 400
MAX_ENTRY_CHARS = 32_768
MAX_LINE_BYTES = 16_384
SOURCE_LOCATION = "logging.googleapis.com/sourceLocation"

# glog's prefix as Triton writes it: severity, MMDD hh:mm:ss.micro, thread id, file:line] message
_GLOG = re.compile(r"([IWEF])\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ ([^:\] ]+):(\d+)\] ?(.*)")
# Python's warnings.formatwarning: `path:line: CategoryWarning: message`.
_PYTHON_WARNING = re.compile(r"\S.*:\d+: \w*Warning: ")


@dataclass
class Entry:
    severity: str
    lines: list[str]
    source: dict[str, str] = field(default_factory=dict)
    # Whether lines without a prefix join it: those after a line of their own (a traceback's), and a table
    # after Triton's empty message, up to its blank line. Not after a glog message: Triton quotes its own
    # messages on one line, and what follows comes from someone else (a stub starting beside it).
    joined_by_lines: bool = True
    ends_at_blank_line: bool = False

    @property
    def chars(self) -> int:
        return sum(len(line) + 1 for line in self.lines)

    def json_line(self) -> str:
        where = {SOURCE_LOCATION: self.source} if self.source else {}
        return json_line(self.severity, "\n".join(self.lines), "tritonserver", **where)


def entry_of(line: str, stream: str) -> Entry | str:
    """The entry a line begins (or the line itself, when it is already a JSON entry with a severity)."""
    glog = _GLOG.fullmatch(line)
    if glog:
        letter, file, number, message = glog.groups()
        text = _unquoted(message)
        source = {"file": file, "line": number}
        # An empty message heads a table that follows on lines of its own.
        table = not text
        return Entry(
            SEVERITIES[letter],
            [text] if text else [],
            source,
            joined_by_lines=table,
            ends_at_blank_line=table,
        )
    if line.startswith("{"):
        try:
            parsed = json.loads(line)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and "severity" in parsed:
            return line
    if _PYTHON_WARNING.match(line):
        return Entry("WARNING", [line])
    return Entry("ERROR" if stream == "stderr" else "INFO", [line])


def _continues(begun: Entry | str) -> bool:
    """Whether a line may join the entry before it: not a glog line, a JSON entry or a Python warning."""
    return isinstance(begun, Entry) and not begun.source and begun.severity != "WARNING"


def _unquoted(message: str) -> str:
    """Triton quotes a message as a JSON string (newlines escaped); its tables' header messages are empty."""
    if len(message) >= 2 and message[0] == message[-1] == '"':
        try:
            text = json.loads(message)
        except ValueError:
            return message
        return text if isinstance(text, str) else message
    return message


class Pump:
    """Reads one of the server's output pipes to its end and writes its entries to `sink` (under `lock`,
    shared by every writer of the sink)."""

    def __init__(
        self, fd: int, stream: str, sink: TextIO, lock: threading.Lock, window_s: float = GROUP_WINDOW_S
    ) -> None:
        self._fd, self._stream, self._sink, self._lock = fd, stream, sink, lock
        self._window_ms = window_s * 1000
        self._entry: Entry | None = None
        self._sink_failed = False

    def run(self) -> None:
        """Pump to the pipe's end. Whatever fails here, the pipe is read on to its end: a server whose pipe
        is full blocks in its next log line, and a blocked Triton serves nothing and ends nothing."""
        try:
            self._pump()
        finally:
            self._copy_to_end()
            os.close(self._fd)

    def _copy_to_end(self) -> None:
        """What is left in the pipe, to the sink as it is (only after a fault of the pump's own)."""
        decoder = codecs.getincrementaldecoder("utf-8")("replace")  # a character may span two reads
        while chunk := os.read(self._fd, MAX_LINE_BYTES):
            self._write(decoder.decode(chunk), end="")

    def _pump(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        pending = b""
        while True:
            waiting = self._entry is not None or pending
            if not poller.poll(self._window_ms if waiting else None):
                if pending:  # a line without its newline yet (a progress bar's), on its own
                    self._line(pending)
                    pending = b""
                self._flush()
                continue
            chunk = os.read(self._fd, MAX_LINE_BYTES)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self._line(line)
            if len(pending) >= MAX_LINE_BYTES:
                self._line(pending)
                pending = b""
        if pending:
            self._line(pending)
        self._flush()

    def _line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        begun = entry_of(line, self._stream)
        current = self._entry
        if current is not None and current.ends_at_blank_line and not line.strip():
            self._flush()
        elif current is not None and current.joined_by_lines and _continues(begun):
            if current.chars + len(line) > MAX_ENTRY_CHARS:
                self._flush()  # the rest goes on in an entry of the same kind
                self._entry = current = dataclasses.replace(current, lines=[])
            current.lines.append(line)  # within the window of the entry before it
        elif not line.strip():
            self._flush()  # a blank line on its own says nothing
        else:
            self._flush()
            if isinstance(begun, str):
                self._write(begun)
            else:
                self._entry = begun
                if not begun.joined_by_lines:
                    self._flush()
        if self._entry is not None and len(self._entry.lines) >= MAX_ENTRY_LINES:
            self._flush()

    def _flush(self) -> None:
        if self._entry is not None and any(line.strip() for line in self._entry.lines):
            self._write(self._entry.json_line())
        self._entry = None

    def _write(self, line: str, end: str = "\n") -> None:
        if self._sink_failed:
            return  # the pipe is still read (run): the server must never block on it
        with self._lock:
            try:
                self._sink.write(line + end)
                self._sink.flush()
            except (OSError, ValueError):  # closed, or a broken pipe: nowhere left to say anything
                self._sink_failed = True


def json_line(severity: str, message: str, logger: str, **fields: object) -> str:
    """One entry as Cloud Logging reads it (the server's, and the supervisor's own lines); ASCII JSON,
    whatever the sink's encoding."""
    return json.dumps({"severity": severity, "message": message, "logger": logger, **fields})
