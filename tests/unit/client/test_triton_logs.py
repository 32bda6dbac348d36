"""Triton's output as JSON entries with a severity: lines as tritonserver 2.51 and its Python-backend stubs
write them (taken from a real server's stderr), through a real pipe from another process."""

import io
import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from fluxfill.client import triton_logs

# A real tritonserver's stderr (a model whose initialize raised, the start-up table after an empty message),
# then a stub's own writes: each line is written on its own, as Python's line-buffered stderr writes them.
SERVER_LINES = [
    'I1205 16:43:05.297677 24802 model_lifecycle.cc:472] "loading: flux_fill_stream:1"',
    'W1205 16:43:05.296738 24802 pinned_memory_manager.cc:273] "Unable to allocate pinned system memory"',
    "E1205 16:43:06.884936 24802 model_lifecycle.cc:642] \"failed to load 'flux_fill_stream' version 1: "
    'Internal: RuntimeError: weights_sha256 mismatch\\n\\nAt:\\n  model.py(4): initialize\\n"',
    "I1205 16:43:06.885098 24802 server.cc:674] ",
    "+-------+---------+-------------+",
    "| Model | Version | Status      |",
    "+-------+---------+-------------+",
    "",
    "Traceback (most recent call last):",
    '  File "model.py", line 9, in execute',
    "RuntimeError: CUDA error: an illegal memory access was encountered",
    "model.py:7: UserWarning: a deprecated argument",
    '  warnings.warn("a deprecated argument")',
    '{"severity": "NOTICE", "message": "already an entry"}',
    'F1205 16:43:07.000001 24802 server.cc:1] "\\u00e9t\\u00e9 \\u2713"',
    "fluxfill watchdog: a run has shown no progress for 300 s",
]
# What the writer does instead of writing a line: sleep beyond the window, or write bytes without a newline.
PAUSE, TAIL = "<pause>", "<tail>"
WRITER = textwrap.dedent(
    """
    import os, sys, time
    for line in sys.argv[2:]:
        if line == "<pause>":
            time.sleep(float(sys.argv[1]))
        elif line == "<tail>":
            os.write(1, b"bytes not UTF-8: \\xff\\xfe, and no newline at the end")
        else:
            os.write(1, line.encode() + b"\\n")  # one write per line, as the writers do
    """
)
# Long on a busy machine: lines a writer puts out at once are grouped however late each comes.
WINDOW_S = 5.0


def pumped(lines: list[str], stream: str, window_s: float = WINDOW_S) -> list[dict[str, object]]:
    """The entries a Pump writes of what a writer process put into its pipe, in order."""
    read, write = os.pipe()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(window_s * 5), *lines], stdout=write)
    os.close(write)
    sink = io.StringIO()
    pump = threading.Thread(target=triton_logs.Pump(read, stream, sink, threading.Lock(), window_s).run)
    pump.start()
    pump.join(timeout=60)
    assert writer.wait(timeout=30) == 0
    assert not pump.is_alive(), "the pump did not end with its pipe"
    return [json.loads(line) for line in sink.getvalue().splitlines()]


def test_each_entry_has_its_severity_and_its_whole_message() -> None:
    entries = pumped(SERVER_LINES, "stderr")

    assert [(entry["severity"], entry["message"]) for entry in entries] == [
        ("INFO", "loading: flux_fill_stream:1"),
        ("WARNING", "Unable to allocate pinned system memory"),
        (
            "ERROR",
            "failed to load 'flux_fill_stream' version 1: Internal: RuntimeError: weights_sha256 mismatch\n\n"
            "At:\n  model.py(4): initialize\n",
        ),
        (
            "INFO",
            "\n".join(SERVER_LINES[4:7]),  # the table, up to its blank line
        ),
        (
            "ERROR",
            'Traceback (most recent call last):\n  File "model.py", line 9, in execute\n'
            "RuntimeError: CUDA error: an illegal memory access was encountered",
        ),
        (
            "WARNING",
            'model.py:7: UserWarning: a deprecated argument\n  warnings.warn("a deprecated argument")',
        ),
        ("NOTICE", "already an entry"),
        ("CRITICAL", "été ✓"),
        ("ERROR", "fluxfill watchdog: a run has shown no progress for 300 s"),
    ]
    assert entries[2]["logging.googleapis.com/sourceLocation"] == {
        "file": "model_lifecycle.cc",
        "line": "642",
    }
    assert {entry.get("logger") for entry in entries} == {"tritonserver", None}  # None: the line's own


def test_lines_apart_in_time_are_entries_apart() -> None:
    """What follows a line after the grouping window is another writer's: a stub's stdout line after the
    watchdog's is an entry of its own, and so are bytes that never got their newline."""
    lines = ["fluxfill watchdog: stalled", PAUSE, "a print of a stub's", PAUSE, TAIL]
    entries = pumped(lines, "stdout", window_s=0.2)
    assert [(entry["severity"], entry["message"]) for entry in entries] == [
        ("INFO", "fluxfill watchdog: stalled"),
        ("INFO", "a print of a stub's"),
        ("INFO", "bytes not UTF-8: \ufffd\ufffd, and no newline at the end"),
    ]


def test_a_glog_message_is_not_joined_by_another_writers_line() -> None:
    """A stub's print right after Triton's line (a stub starting as Triton logs that it does) is its own."""
    entries = pumped(
        ['I1205 16:43:06.547635 24802 python_be.cc:2249] "initialize: flux_fill_0"', "hi"], "stdout"
    )
    assert [entry["message"] for entry in entries] == ["initialize: flux_fill_0", "hi"]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ('"quoted \\"and\\" escaped"', 'quoted "and" escaped'),
        ("not quoted", "not quoted"),
        ('"a broken \\x quote"', '"a broken \\x quote"'),  # as Triton wrote it, rather than nothing
    ],
)
def test_a_glog_message_is_unquoted_where_triton_quoted_it(message: str, expected: str) -> None:
    entry = triton_logs.entry_of(f"E1205 16:43:06.884936 24802 a.cc:1] {message}", "stderr")
    assert isinstance(entry, triton_logs.Entry)
    assert (entry.severity, entry.lines) == ("ERROR", [expected])


def test_an_entry_holds_at_most_its_lines() -> None:
    lines = ["Traceback (most recent call last):"] + [
        f"  frame {n}" for n in range(triton_logs.MAX_ENTRY_LINES)
    ]
    entries = pumped(lines, "stderr")
    assert [len(str(entry["message"]).splitlines()) for entry in entries] == [triton_logs.MAX_ENTRY_LINES, 1]


def test_no_entry_is_larger_than_cloud_logging_takes() -> None:
    """Cloud Logging refuses entries over 256 KB: a table of long rows, or a line of control characters
    (six characters each in JSON), goes on in further entries of the same kind."""
    row = "| " + "\x01" * 5000 + " |"
    lines = ["I1205 16:43:06.885098 24802 server.cc:674] ", *[row] * 40, "", "x" * 100_000]
    entries = pumped(lines, "stderr")
    assert max(len(json.dumps(entry)) for entry in entries) < 256_000
    table = [entry for entry in entries if entry["severity"] == "INFO"]
    assert "\n".join(str(entry["message"]) for entry in table) == "\n".join([row] * 40)
    assert {entry.get("logging.googleapis.com/sourceLocation", {}).get("line") for entry in table} == {"674"}
    rest = [entry for entry in entries if entry["severity"] == "ERROR"]  # the long line, in pieces
    assert "".join(str(entry["message"]) for entry in rest).replace("\n", "") == "x" * 100_000


class FailingSink(io.StringIO):
    """A sink that can no longer be written (a closed or broken stdout)."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


# A megabyte of log lines, far more than a pipe holds (64 KiB).
FLOOD = textwrap.dedent(
    """
    import os
    for n in range(1000):
        os.write(1, b'W1205 16:43:06.000001 1 a.cc:1] "line %d %s"\\n' % (n, b"x" * 1000))
    """
)


@pytest.mark.parametrize("fault", ["sink", "pump"])
def test_the_servers_pipe_is_read_to_its_end_whatever_fails(
    fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server writing into a pipe nobody reads blocks once the pipe is full: a Triton blocked in a log line
    serves nothing and never ends. The pipe is read to its end whether the sink fails or the pump's own
    reading of the lines does (then the rest is copied as it is, and the fault is raised when it ends)."""
    sink: io.StringIO = FailingSink() if fault == "sink" else io.StringIO()
    if fault == "pump":
        monkeypatch.setattr(triton_logs, "entry_of", lambda line, stream: 1 / 0)
    read, write = os.pipe()
    writer = subprocess.Popen([sys.executable, "-c", FLOOD], stdout=write)
    os.close(write)
    raised: list[BaseException] = []

    def pump() -> None:
        try:
            triton_logs.Pump(read, "stderr", sink, threading.Lock()).run()
        except ZeroDivisionError as error:
            raised.append(error)

    thread = threading.Thread(target=pump)
    thread.start()
    thread.join(timeout=60)
    assert writer.wait(timeout=60) == 0, "the writer was blocked"
    assert not thread.is_alive()
    if fault == "pump":
        assert len(raised) == 1
        assert sink.getvalue().splitlines()[-1].startswith('W1205 16:43:06.000001 1 a.cc:1] "line 999 x')
