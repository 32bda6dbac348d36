"""The Triton image's supervisor: a ready model's stub that dies stops the server; signals and statuses pass.

The server here is a small stand-in process with the shapes the supervisor reads: children whose command line
is a `triton_python_backend_stub` serving `.../<model>/1/model.py`, and /v2/health/ready on its --http-port.
The real tritonserver case is tests/integration/images (the image's entrypoint runs under the supervisor).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from fluxfill.client.triton_binary import free_port
from fluxfill.client.triton_supervisor import (
    STUB_DIED_EXIT_CODE,
    http_host,
    http_port,
    ready_models,
    server_ready,
    stub_processes,
)
from tests.support import HTTP2_SETTINGS, answer_every_connection

FAKE_SERVER = textwrap.dedent(
    """
    import http.server, json, os, signal, subprocess, sys, threading
    from pathlib import Path

    work = Path(sys.argv[1])
    port = int(next(a for a in sys.argv if a.startswith("--http-port=")).partition("=")[2])
    ready = False  # until its stubs are set up, as a tritonserver's models are READY after their stubs start

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            with open(work / "asked-ready", "a") as asked:  # a check of the supervisor's
                asked.write("x")
            self.send_response(200 if ready and self.path == "/v2/health/ready" else 503)
            self.end_headers()
        def do_POST(self):  # the repository index: both models READY once the server is
            with open(work / "indexed", "a") as asked:  # a check of the supervisor's while ready
                asked.write("x")
            state = "READY" if ready else "LOADING"
            index = [{"name": m, "version": "1", "state": state} for m in ("flux_fill", "flux_fill_stream")]
            body = json.dumps(index).encode()
            self.send_response(200 if self.path == "/v2/repository/index" else 404)
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass

    # Log lines as tritonserver writes them (glog's format, on stderr).
    sys.stderr.write('I1205 16:43:05.297677 1 server.py:1] "stand-in started"\\n')
    sys.stderr.flush()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stub = work / "triton_python_backend_stub"
    stubs = []

    def stop(signum, frame):
        (work / "stopped").write_text(str(signum))
        for process in stubs:
            process.kill()
        sys.stderr.write(f'E1205 16:43:09.000001 1 server.py:2] "stopped by signal {signum}"\\n')
        sys.stderr.flush()
        sys.exit(int((work / "exit-status").read_text()))

    # Before the stubs are started and said: a stop that came before would leave them running, holding the
    # supervisor's stderr open (a test once waited 30 s for it on a loaded machine).
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    stubs.extend(
        subprocess.Popen([str(stub), "-c", "import time; time.sleep(600)", f"/m/{model}/1/model.py", "shm"])
        for model in ("flux_fill", "flux_fill_stream")
    )
    if (work / "kill-stream-stub-at-once").exists():  # gone before any check of the supervisor's
        stubs[1].kill()
        stubs[1].wait()
    (work / "stubs").write_text(" ".join(str(p.pid) for p in stubs))
    ready = (work / "ready").read_text().strip() == "yes"
    if (work / "exit-now").exists():  # a server that ends by itself (its stubs end with it)
        for process in stubs:
            process.kill()
        sys.exit(int((work / "exit-status").read_text()))
    while True:
        signal.pause()
    """
)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "server.py").write_text(FAKE_SERVER)
    # A stub's command line starts with its binary's name: a link to this Python under that name.
    (tmp_path / "triton_python_backend_stub").symlink_to(sys.executable)
    (tmp_path / "ready").write_text("yes")
    (tmp_path / "exit-status").write_text("0")
    for model in ("flux_fill", "flux_fill_stream"):  # the repository the supervisor reads: Python models
        (tmp_path / "models" / model / "1").mkdir(parents=True)
        (tmp_path / "models" / model / "1" / "model.py").write_text("")
    return tmp_path


def supervise(work: Path, *options: str) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        "-m",
        "fluxfill.client.triton_supervisor",
        "--check-s=0.1",
        *options,
        sys.executable,
        str(work / "server.py"),
        str(work),
        f"--http-port={free_port()}",
        f"--model-repository={work / 'models'}",
    ]
    return subprocess.Popen(command, stderr=subprocess.PIPE, text=True)


def stub_pids(work: Path) -> list[int]:
    deadline = time.monotonic() + 30
    while not (work / "stubs").exists() or not (work / "stubs").read_text():
        assert time.monotonic() < deadline, "the stand-in server never started its stubs"
        time.sleep(0.05)
    return [int(pid) for pid in (work / "stubs").read_text().split()]


def checks(work: Path, record: str) -> int:
    path = work / record
    return len(path.read_text()) if path.exists() else 0


def wait_for_checks(work: Path, count: int, record: str = "indexed") -> None:
    """Until the supervisor has made `count` more checks: each asks whether the server is ready
    (`asked-ready`), and while it is, the repository index (`indexed`), then lists the stubs. Two after the
    stubs were started, and the first of them has listed them (a fixed sleep of 0.5 s was once too short on a
    loaded CI machine, and the stub died unseen)."""
    target = checks(work, record) + count
    deadline = time.monotonic() + 30
    while checks(work, record) < target:
        assert time.monotonic() < deadline, f"the supervisor made no {count} checks ({record})"
        time.sleep(0.02)


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    return process.returncode, stderr


def test_a_ready_models_stub_that_dies_stops_the_server(work: Path) -> None:
    supervisor = supervise(work)
    stream_stub = stub_pids(work)[1]
    wait_for_checks(work, 2)  # both stubs are watched
    os.kill(stream_stub, signal.SIGKILL)

    status, stderr = finish(supervisor)

    assert status == STUB_DIED_EXIT_CODE
    assert "stub of flux_fill_stream (pid" in stderr
    assert "stopped for a restart" in stderr
    assert (work / "stopped").read_text() == str(int(signal.SIGTERM)), "the server was asked to stop"


def test_with_json_logs_the_servers_lines_and_the_supervisors_are_entries_with_a_severity(work: Path) -> None:
    """As the image runs it: Cloud Logging gives plain text no severity (Cloud Run), or ERROR for any stderr
    line (GKE). The server's last line, written as it stops, is written too."""
    supervisor = supervise(work, "--json-logs")
    stream_stub = stub_pids(work)[1]
    wait_for_checks(work, 2)
    os.kill(stream_stub, signal.SIGKILL)

    status, stderr = finish(supervisor)

    assert status == STUB_DIED_EXIT_CODE
    entries = [json.loads(line) for line in stderr.splitlines()]
    assert [(entry["severity"], entry["logger"]) for entry in entries] == [
        ("INFO", "tritonserver"),
        ("ERROR", "triton_supervisor"),
        ("ERROR", "tritonserver"),
    ]
    assert entries[0]["message"] == "stand-in started"
    assert "stub of flux_fill_stream (pid" in entries[1]["message"]
    assert entries[2]["message"] == f"stopped by signal {int(signal.SIGTERM)}"


def test_a_ready_models_stub_that_died_before_any_check_stops_the_server(work: Path) -> None:
    """The chaos run's stub kill, a second after a restarted server was ready, fell between the supervisor's
    checks: no check had seen the stub, so none missed it, and the server served a dead model for good. A
    READY Python model without a stub is that death."""
    (work / "kill-stream-stub-at-once").write_text("")
    supervisor = supervise(work)

    status, stderr = finish(supervisor)

    assert status == STUB_DIED_EXIT_CODE
    assert "stub of flux_fill_stream (none running)" in stderr
    assert (work / "stopped").read_text() == str(int(signal.SIGTERM))


def test_a_stub_that_ends_before_the_server_is_ready_is_the_servers_business(work: Path) -> None:
    """With --exit-on-error=false a model that fails to load ends its stub and the server stays up with the
    reason (the startup probe fails instead): not ready, so not watched."""
    (work / "ready").write_text("no")
    supervisor = supervise(work)
    os.kill(stub_pids(work)[1], signal.SIGKILL)
    wait_for_checks(work, 3, "asked-ready")
    assert supervisor.poll() is None, "the supervisor stopped a server that was never ready"
    supervisor.send_signal(signal.SIGTERM)

    status, stderr = finish(supervisor)

    assert status == 0
    assert "stub" not in stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_passes_to_the_server_and_its_status_comes_back(work: Path, signum: int) -> None:
    (work / "exit-status").write_text("0")
    supervisor = supervise(work)
    stub_pids(work)
    time.sleep(0.3)
    supervisor.send_signal(signum)

    status, stderr = finish(supervisor)

    assert (work / "stopped").read_text() == str(int(signum))
    # The stubs end with the server: a shutdown is not a death to report.
    assert status == 0
    assert "stub" not in stderr


def test_the_servers_own_exit_status_is_the_supervisors(work: Path) -> None:
    (work / "exit-status").write_text("3")
    (work / "exit-now").write_text("")
    status, _ = finish(supervise(work))
    assert status == 3


def test_stubs_are_the_servers_children_named_as_the_stub_with_their_model(tmp_path: Path) -> None:
    proc = tmp_path / "proc"

    def process(pid: int, parent: int, comm: str, *argv: str) -> None:
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "stat").write_text(f"{pid} ({comm}) S {parent} {pid} 0 0\n")
        (proc / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")

    stub = "/opt/tritonserver/backends/python/triton_python_backend_stub"
    process(10, 1, "tritonserver", "tritonserver")
    process(11, 10, "triton_python_ba", stub, "/m/flux_fill_stream/1/model.py", "shm", "1")
    process(12, 10, "weird) (name", stub, "/m/flux_fill/1/model.py")
    process(13, 10, "sh", "/bin/sh", "-c", "true")  # another child: not a stub
    process(14, 99, "triton_python_ba", stub, "/m/other/1/model.py")  # another server's stub
    process(15, 10, "triton_python_ba", stub)  # no model file on its command line

    assert stub_processes(10, proc) == {11: "flux_fill_stream", 12: "flux_fill", 15: ""}


@pytest.mark.parametrize(
    ("arguments", "port"),
    [
        ([], 8000),
        (["--http-port=8000", "--grpc-port=8001", "--http-port=9100"], 9100),
        (["--http-port", "9200"], 9200),
    ],
)
def test_the_http_port_is_the_servers_last_one(arguments: list[str], port: int) -> None:
    assert http_port(arguments) == port


@pytest.mark.parametrize(
    ("arguments", "host"),
    [
        ([], "127.0.0.1"),
        (["--http-address=0.0.0.0"], "127.0.0.1"),
        (["--http-address", "10.0.0.7", "--http-port=1"], "10.0.0.7"),
        (["--http-address=::"], "127.0.0.1"),
    ],
)
def test_readiness_is_asked_where_the_server_listens(arguments: list[str], host: str) -> None:
    assert http_host(arguments) == host


def test_a_server_that_cannot_start_is_one_line_and_a_shells_status(tmp_path: Path) -> None:
    missing = subprocess.run(
        [sys.executable, "-m", "fluxfill.client.triton_supervisor", str(tmp_path / "tritonserver")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert missing.returncode == 127
    assert missing.stderr.strip().splitlines() == [
        f"triton_supervisor: cannot start {tmp_path / 'tritonserver'}: No such file or directory"
    ]


def test_a_port_that_answers_another_protocol_is_not_a_ready_server() -> None:
    """Another server's gRPC port where Triton's HTTP was expected (a port taken before Triton bound it): its
    HTTP/2 answer is no readiness, and no traceback of the supervisor's."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        threading.Thread(target=answer_every_connection, args=(taken, HTTP2_SETTINGS), daemon=True).start()
        port = taken.getsockname()[1]
        assert server_ready("127.0.0.1", port) is False
        assert ready_models("127.0.0.1", port) is None
