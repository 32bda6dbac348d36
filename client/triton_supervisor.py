"""Run tritonserver, and stop it when a ready model's Python-backend stub dies, so the platform restarts it.

Triton 2.51 neither restarts the stub of a decoupled model nor lets its death touch any health endpoint: after
the `flux_fill_stream` stub was killed (an out-of-memory kill, a crash in a CUDA library, or its own stall
watchdog), `/v2/health/live`, `/v2/health/ready` and the model's ready all still answered 200 while every
request failed with "Stub process 'flux_fill_stream_0' is not healthy", for as long as the container ran.
Liveness and startup probes cannot see that, so this process does: it starts tritonserver as its child,
passes SIGTERM and SIGINT on to it, and once the server has been ready it remembers the stub processes it saw;
when one of them is gone while the server runs, it says which model's in one line and stops the server
(SIGTERM, then SIGKILL after `--stop-timeout-s`), exiting with `STUB_DIED_EXIT_CODE`. So it does when a
Python model the server reports READY has no stub at all: one that died before a check could see it (the
chaos run's stub kill, a second after a restarted server was ready, found that gap). Otherwise it exits
with the server's own status.

With `--json-logs` (the image's entrypoint) the server's output and the supervisor's own lines are written as
JSON entries with a severity, as Cloud Logging reads them (fluxfill.client.triton_logs).

The standard library and fluxfill.client.triton_binary and triton_logs only (it starts before anything else in
the image):
    python3 -m fluxfill.client.triton_supervisor [--json-logs] tritonserver --model-repository=... ...
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from fluxfill.client import triton_logs
from fluxfill.client.process_groups import live_processes
from fluxfill.client.triton_binary import NO_HTTP_ANSWER, STUB_NAME, command_line

# EX_SOFTWARE: not the server's own status; the platform restarts the container either way.
STUB_DIED_EXIT_CODE = 70
# Stubs also end when the server exits by itself (their parent ends them first): it is given this long to
# exit before their end is taken for a death, so that its own status stands (it was once reported as 70).
SERVER_EXIT_GRACE_S = 1.0
DEFAULT_HTTP_PORT = 8000
# What a stub's command line carries after the stub: its model's `.../<model>/<version>/model.py`.
_MODEL_FILE = "model.py"
# The logger of the supervisor's own entries with --json-logs (an alert filters for it).
LOGGER = "triton_supervisor"
# After the server exits, how long its output (a stub's last lines among it) may take to be written.
OUTPUT_DRAIN_S = 5.0


def _values(server_args: Sequence[str], flag: str) -> list[str]:
    """The values of every tritonserver `flag` (`--flag=value` or `--flag value`), in order."""
    values = []
    for at, argument in enumerate(server_args):
        if argument.startswith(f"{flag}="):
            values.append(argument.partition("=")[2])
        elif argument == flag and at + 1 < len(server_args):
            values.append(server_args[at + 1])
    return values


def _last_value(server_args: Sequence[str], flag: str) -> str | None:
    """The value of tritonserver's last `flag`, or None."""
    values = _values(server_args, flag)
    return values[-1] if values else None


def python_models(server_args: Sequence[str]) -> frozenset[str]:
    """The models of the server's `--model-repository` folders that the Python backend serves (a
    `<version>/model.py` in their folder): each one READY has a stub process."""
    names: set[str] = set()
    for repository in _values(server_args, "--model-repository"):
        try:
            folders = [path for path in Path(repository).iterdir() if path.is_dir()]
        except OSError:
            continue
        names.update(folder.name for folder in folders if any(folder.glob(f"*/{_MODEL_FILE}")))
    return frozenset(names)


def http_port(server_args: Sequence[str]) -> int:
    """The port tritonserver will serve HTTP on: its last `--http-port`, else Triton's default."""
    port = _last_value(server_args, "--http-port")
    return DEFAULT_HTTP_PORT if port is None else int(port)


def http_host(server_args: Sequence[str]) -> str:
    """Where to ask tritonserver for its readiness: its `--http-address`, or loopback when it listens on
    every address (the default)."""
    address = _last_value(server_args, "--http-address")
    return "127.0.0.1" if address in (None, "", "0.0.0.0", "::") else str(address)  # noqa: S104


def stub_processes(server_pid: int, proc: Path = Path("/proc")) -> dict[int, str]:
    """The server's Python-backend stubs still running: pid -> the model each serves ('' if unreadable)."""
    stubs = {}
    for pid in _children(server_pid, proc):
        arguments = command_line(pid, proc)  # None: it ended meanwhile
        if arguments and arguments[0].endswith(STUB_NAME):
            stubs[pid] = _model_of(arguments)
    return stubs


def _children(pid: int, proc: Path) -> list[int]:
    """Live processes whose parent is `pid` (`/proc/N/task/N/children` needs a kernel option that not every
    kernel has)."""
    return [child for child, (parent, _) in live_processes(proc).items() if parent == pid]


def _model_of(arguments: list[str]) -> str:
    for argument in arguments[1:]:
        path = Path(argument)
        if path.name == _MODEL_FILE and len(path.parts) >= 3:
            return path.parts[-3]
    return ""


def server_ready(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """Whether tritonserver answers 200 to /v2/health/ready (with --strict-readiness: every model READY)."""
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/v2/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            return bool(reply.status == 200)
    except NO_HTTP_ANSWER:
        return False


def ready_models(host: str, port: int, timeout_s: float = 2.0) -> set[str] | None:
    """The models tritonserver reports READY (POST /v2/repository/index); None when it cannot be asked."""
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/v2/repository/index"
    request = urllib.request.Request(url, data=b'{"ready": true}', method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:  # noqa: S310 (http, built above)
            index = json.loads(reply.read())
    except NO_HTTP_ANSWER:
        return None
    if not isinstance(index, list):
        return None
    return {
        str(model.get("name")) for model in index if isinstance(model, dict) and model.get("state") == "READY"
    }


def unserved_models(host: str, port: int, server_pid: int, python: frozenset[str]) -> list[str]:
    """The Python models the server reports READY with no stub process: a stub that died before any check
    saw it. The stubs are listed after the server answers, so a model that became READY meanwhile has its
    stub listed (a stub starts before its model is READY)."""
    ready = ready_models(host, port) if python else None
    return without_stub(ready, stub_processes(server_pid), python)


def without_stub(ready: set[str] | None, stubs: dict[int, str], python: frozenset[str]) -> list[str]:
    """Of the READY models (None: the index could not be asked), the Python ones no listed stub serves."""
    if not ready:
        return []
    served = set(stubs.values())
    if "" in served:
        return []  # a stub whose model could not be read: it may be the one
    return sorted((ready & python) - served)


class Supervisor:
    """One tritonserver child and the stubs it had once ready."""

    def __init__(
        self,
        server_args: Sequence[str],
        *,
        check_s: float = 5.0,
        stop_timeout_s: float = 25.0,
        ready: Callable[[str, int], bool] = server_ready,
        json_logs: bool = False,
    ) -> None:
        self._args = list(server_args)
        self._host, self._port = http_host(self._args[1:]), http_port(self._args[1:])
        self._python_models = python_models(self._args[1:])
        self._check_s = check_s
        self._stop_timeout_s = stop_timeout_s
        self._ready = ready
        self._json_logs = json_logs
        self._output_lock = threading.Lock()
        self._stopping = False
        self._server: subprocess.Popen[bytes] | None = None

    def run(self) -> int:
        """Start the server and watch it until it exits; its status, or STUB_DIED_EXIT_CODE."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._pass_on)
        pipes = {"stdout": os.pipe(), "stderr": os.pipe()} if self._json_logs else {}
        try:
            self._server = server = subprocess.Popen(
                self._args,
                stdout=pipes["stdout"][1] if pipes else None,
                stderr=pipes["stderr"][1] if pipes else None,
            )
        except OSError as error:  # as a shell says it: 127 not found, 126 not executable
            for read, write in pipes.values():
                os.close(read)
                os.close(write)
            self._say(f"cannot start {self._args[0]}: {error.strerror or error}")
            return 127 if isinstance(error, FileNotFoundError) else 126
        pumps = []
        for stream, (read, write) in pipes.items():
            os.close(write)  # the server's (and its stubs') now: the pipe ends when theirs are closed
            sink = sys.stdout if stream == "stdout" else sys.stderr
            pump = triton_logs.Pump(read, stream, sink, self._output_lock)
            pumps.append(threading.Thread(target=pump.run, name=f"triton-{stream}", daemon=True))
            pumps[-1].start()
        status = self._watch(server)
        deadline = time.monotonic() + OUTPUT_DRAIN_S
        for pump_thread in pumps:  # a stub left running holds its pipe open: not waited for beyond this
            pump_thread.join(max(0.0, deadline - time.monotonic()))
        return status

    def _say(self, message: str) -> None:
        """One line of the supervisor's own, on stderr: an ERROR entry with `--json-logs`."""
        line = f"{LOGGER}: {message}"
        if self._json_logs:
            line = triton_logs.json_line("ERROR", line, LOGGER)
        with self._output_lock:
            print(line, file=sys.stderr, flush=True)

    def _watch(self, server: "subprocess.Popen[bytes]") -> int:
        """Watch the running server until it exits; its status, or STUB_DIED_EXIT_CODE."""
        watched: dict[int, str] = {}
        while True:
            status = self._wait(server, self._check_s)
            if status is not None:
                return status if status >= 0 else 128 - status  # killed by a signal: as a shell says it
            if self._stopping:
                continue  # the stubs end with the server: nothing to watch any more
            running = stub_processes(server.pid)
            gone = {pid: model for pid, model in watched.items() if pid not in running}
            if gone:
                stopped = self._stop_for(
                    [f"{model or 'unknown model'} (pid {pid})" for pid, model in gone.items()], server
                )
                if stopped is not None:
                    return stopped
                continue
            if self._ready(self._host, self._port):
                python = self._python_models
                ready = ready_models(self._host, self._port) if python else None
                # Listed again once it answers ready and its index is read (as unserved_models does): a stub
                # that ended before that was never seen serving.
                listed = stub_processes(server.pid)
                watched.update(listed)
                unserved = without_stub(ready, listed, python)
                if unserved:
                    # A stub seen by an earlier check is named by its pid.
                    seen = {model: pid for pid, model in watched.items()}
                    stopped = self._stop_for(
                        [f"{m} (pid {seen[m]})" if m in seen else f"{m} (none running)" for m in unserved],
                        server,
                    )
                    if stopped is not None:
                        return stopped

    def _pass_on(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping = True
        if self._server is not None and self._server.poll() is None:
            self._server.send_signal(signum)

    def _stop_for(self, stubs: list[str], server: "subprocess.Popen[bytes]") -> int | None:
        """Stop the server for its dead stubs; None (go on) when they ended with the server: it is being
        stopped (a signal came during the check), or it is exiting by itself (its own status then stands)."""
        if self._stopping:
            return None
        status = self._wait(server, SERVER_EXIT_GRACE_S)
        if status is not None or self._stopping:
            return None
        models = ", ".join(sorted(stubs))
        self._say(
            f"the Python-backend stub of {models} exited while Triton was serving; Triton would stay live "
            "and ready and fail every request to it, so it is stopped for a restart"
        )
        self._stopping = True
        server.terminate()
        if self._wait(server, self._stop_timeout_s) is None:
            server.kill()
            server.wait()
        return STUB_DIED_EXIT_CODE

    @staticmethod
    def _wait(server: "subprocess.Popen[bytes]", timeout_s: float) -> int | None:
        try:
            return server.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: `python3 -m fluxfill.client.triton_supervisor [options] TRITONSERVER [ARGS...]`."""
    parser = argparse.ArgumentParser(prog="triton_supervisor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check-s", type=float, default=float(os.environ.get("FLUXFILL_STUB_CHECK_S", "5")))
    parser.add_argument("--stop-timeout-s", type=float, default=25.0)
    parser.add_argument(
        "--json-logs", action="store_true", help="write the server's output as JSON entries with a severity"
    )
    parser.add_argument("server", nargs=argparse.REMAINDER, help="tritonserver and its arguments")
    options = parser.parse_args(argv)
    if not options.server:
        parser.error("give the tritonserver command to run")
    return Supervisor(
        options.server,
        check_s=options.check_s,
        stop_timeout_s=options.stop_timeout_s,
        json_logs=options.json_logs,
    ).run()


if __name__ == "__main__":
    raise SystemExit(main())
