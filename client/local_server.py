"""Start, watch and stop a local tritonserver on a copy of a model repository."""

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NamedTuple, Self

# protobuf ships no type stubs and pyproject does not list it among the untyped modules.
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from fluxfill.client.prerequisites import require, triton_problems
from fluxfill.client.process_groups import exit_status, group_members, signal_group, stop_group
from fluxfill.client.triton_binary import (
    NO_HTTP_ANSWER,
    TritonBinary,
    find_tritonserver,
    given_or_free_ports,
    remove_shm_regions,
    shm_regions,
)

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 40


class LocalServerError(RuntimeError):
    """The local tritonserver could not be started or did not come up."""


class ModelUnavailableError(LocalServerError):
    """A model that had to be READY is not; `reason` is Triton's explanation."""

    def __init__(self, model: str, reason: str) -> None:
        super().__init__(f"model {model!r} is not ready: {reason or 'no reason given by Triton'}")
        self.model = model
        self.reason = reason


class ModelState(NamedTuple):
    """A model's state in Triton's repository index (READY, UNAVAILABLE, LOADING, ...) and why."""

    state: str
    reason: str


def override_parameters(config_path: Path, parameters: Mapping[str, str]) -> None:
    """Set or replace `parameters[key].string_value` in a config.pbtxt, in place."""
    config = model_config_pb2.ModelConfig()
    text_format.Parse(config_path.read_text(), config)
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    config_path.write_text(text_format.MessageToString(config))


def copy_repository(
    source: Path, target: Path, parameters: Mapping[str, Mapping[str, str]] | None = None
) -> None:
    """Copy a model repository, then apply per-model parameter overrides to the copy only."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    for model, values in (parameters or {}).items():
        config_path = target / model / "config.pbtxt"
        if not config_path.is_file():
            raise LocalServerError(
                f"cannot override parameters of {model!r}: no {source / model}/config.pbtxt"
            )
        override_parameters(config_path, values)


class LocalTritonServer:
    """A tritonserver process serving a copy of `model_repository`; use as a context manager."""

    def __init__(
        self,
        model_repository: str | os.PathLike[str],
        *,
        run_dir: str | os.PathLike[str] | None = None,
        parameters: Mapping[str, Mapping[str, str]] | None = None,
        env: Mapping[str, str] | None = None,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        host: str = "127.0.0.1",
        startup_timeout_s: float = 120.0,
        exit_timeout_s: int = 3,
        stop_timeout_s: float = 10.0,
        required_models: Iterable[str] = (),
        binary: TritonBinary | None = None,
        keep_run_dir: bool = False,
        supervised: bool = False,
        json_logs: bool = False,
    ) -> None:
        """`supervised`: run tritonserver under fluxfill.client.triton_supervisor, as the Triton image does,
        so the process ends (status STUB_DIED_EXIT_CODE) when a ready model's stub dies instead of serving
        on with a model that fails every request; `pid` is then the supervisor's. `json_logs` (supervised
        only): its log as the image writes it, JSON entries with a severity (fluxfill.client.triton_logs)."""
        self.source_repository = Path(model_repository)
        if not self.source_repository.is_dir():
            raise LocalServerError(f"model repository {self.source_repository} is not a directory")
        self._given_run_dir = Path(run_dir) if run_dir is not None else None
        self._parameters = {model: dict(values) for model, values in (parameters or {}).items()}
        self._env = dict(env or {})
        self.http_port, self.grpc_port, self.metrics_port = given_or_free_ports(
            http_port, grpc_port, metrics_port
        )
        self._host = host
        self._startup_timeout_s = startup_timeout_s
        self._exit_timeout_s = exit_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._required = tuple(required_models)
        self._binary = binary
        self._keep_run_dir = keep_run_dir or run_dir is not None
        self._supervised = supervised
        self._json_logs = json_logs
        self._final_log: str | None = None
        self._run_dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._shm_regions: set[str] = set()  # the Python-backend stubs' shared memory, named when seen
        self._log_file: IO[bytes] | None = None
        self.states: dict[str, ModelState] = {}

    @property
    def http_url(self) -> str:
        """host:port for tritonclient.http (always loopback, which reaches any bind address)."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """host:port for tritonclient.grpc."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """URL of the Prometheus metrics page."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def run_dir(self) -> Path:
        """Directory holding the repository copy, the backend links and the log."""
        if self._run_dir is None:
            raise LocalServerError("server not started")
        return self._run_dir

    @property
    def model_repository(self) -> Path:
        """The copy the server actually serves."""
        return self.run_dir / "model_repository"

    @property
    def log_path(self) -> Path:
        """tritonserver's combined stdout and stderr."""
        return self.run_dir / "tritonserver.log"

    @property
    def pid(self) -> int | None:
        """Process id of tritonserver, which is also its process group id; None before start."""
        return self._process.pid if self._process is not None else None

    def log_text(self, max_lines: int | None = None) -> str:
        """The server log so far, or its last max_lines lines (kept after stop removes a temp run dir)."""
        if self._final_log is not None:
            text = self._final_log
        else:
            try:
                text = self.log_path.read_text(errors="replace")
            except (FileNotFoundError, LocalServerError):
                return ""
        if max_lines is None:
            return text
        return "\n".join(text.splitlines()[-max_lines:])

    def start(self) -> dict[str, ModelState]:
        """Start the server and wait until no model is LOADING; returns each model's state.

        On failure the process may still run: call stop(), or use the instance as a context manager.
        """
        if self._process is not None:
            raise LocalServerError("server already started")
        if self._given_run_dir is not None:
            self._given_run_dir.mkdir(parents=True, exist_ok=True)
            self._run_dir = self._given_run_dir
        else:
            self._run_dir = Path(tempfile.mkdtemp(prefix="fluxfill-triton-"))
        if self._binary is None:
            # A stub that cannot load libpython would leave the models LOADING until the startup timeout.
            require(triton_problems)
        binary = self._binary or find_tritonserver()
        copy_repository(self.source_repository, self.model_repository, self._parameters)
        argv = [
            str(binary.executable),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={binary.prepare_backends(self.run_dir)}",
            f"--http-address={self._host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self._host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self._host}",
            f"--metrics-port={self.metrics_port}",
            # One model failing initialize() must leave the others served and the reason queryable.
            "--exit-on-error=false",
            # A crashed stub otherwise holds shutdown for the 30 s default.
            f"--exit-timeout-secs={self._exit_timeout_s}",
            "--log-verbose=0",
        ]
        if self._supervised:
            options = ["--check-s=1", *(["--json-logs"] if self._json_logs else [])]
            argv = [sys.executable, "-m", "fluxfill.client.triton_supervisor", *options, *argv]
        logger.info("starting %s (run dir %s)", binary.executable, self.run_dir)
        # The forwarding side channel lives in this server's run dir: private, and removed with it.
        environment = {"FLUXFILL_FORWARDING_DIR": str(self.run_dir / "forwarding"), **self._env}
        self._log_file = self.log_path.open("wb")
        # Own session and process group, so stop() can also reach the python backend stubs it forks.
        self._process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=binary.environment(environment),
            cwd=self.run_dir,
            start_new_session=True,
        )
        started = time.monotonic()
        self.states = self._wait_until_loaded(self._process)
        # Noted now, while the stubs run: a server killed later leaves its regions for stop() to remove.
        self._shm_regions |= shm_regions(group_members(self._process.pid))
        logger.info(
            "tritonserver up in %.1f s on %s: %s",
            time.monotonic() - started,
            self.http_url,
            {name: s.state for name, s in self.states.items()},
        )
        if self._required:
            self.require_ready(*self._required)
        return self.states

    def _fail(self, message: str) -> LocalServerError:
        return LocalServerError(f"{message}; log {self.log_path}:\n{self.log_text(LOG_TAIL_LINES)}")

    def _request(self, path: str, method: str = "GET", timeout: float = 2.0) -> Any:
        body = b"{}" if method == "POST" else None
        request = urllib.request.Request(f"http://{self.http_url}{path}", data=body, method=method)
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (fixed http URL)
            payload = response.read()
        return json.loads(payload) if payload else None

    def _wait_until_loaded(self, process: subprocess.Popen[bytes]) -> dict[str, ModelState]:
        deadline = time.monotonic() + self._startup_timeout_s
        while True:
            code = exit_status(process)
            if code is not None:
                raise self._fail(f"tritonserver exited with code {code} during start")
            # With the default model control mode the endpoints only open once loading is over,
            # but the index is still checked so a LOADING model is never reported as settled.
            with contextlib.suppress(*NO_HTTP_ANSWER):
                self._request("/v2/health/live")
                states = self.model_states()
                if all(s.state != "LOADING" for s in states.values()):
                    return states
            if time.monotonic() > deadline:
                raise self._fail(f"tritonserver not loaded after {self._startup_timeout_s:.0f} s")
            time.sleep(0.2)

    def model_states(self) -> dict[str, ModelState]:
        """Ask the server for every model's state and reason (POST /v2/repository/index)."""
        index = self._request("/v2/repository/index", method="POST") or []
        states: dict[str, ModelState] = {}
        for entry in index:
            state = ModelState(str(entry.get("state", "")), str(entry.get("reason", "")))
            # With several versions, one READY version makes the model usable.
            if states.get(entry["name"], ModelState("", "")).state != "READY":
                states[entry["name"]] = state
        return states

    def require_ready(self, *models: str) -> None:
        """Raise ModelUnavailableError for the first named model that is not READY now."""
        states = self.model_states()
        self.states = states
        for model in models:
            state = states.get(model)
            if state is None:
                raise ModelUnavailableError(model, f"not in the model repository {self.source_repository}")
            if state.state != "READY":
                raise ModelUnavailableError(model, f"{state.state}: {state.reason}")

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Block until tritonserver exits (or timeout_s passes); its exit code, or None if still running.
        Its process is reaped only by stop(), after its group is ended (fluxfill.client.process_groups)."""
        if self._process is None:
            raise LocalServerError("server not started")
        return exit_status(self._process, timeout_s)

    def signal_group(self, signum: int) -> None:
        """Send `signum` to tritonserver and its stubs (SIGSTOP, SIGCONT, SIGKILL: a hang or a crash)."""
        if self._process is None:
            raise LocalServerError("server not started")
        signal_group(self._process, signum)

    def stop(self) -> None:
        """Stop the server and everything in its process group; safe to call more than once."""
        process, self._process = self._process, None
        if process is not None:
            self._shm_regions |= shm_regions(group_members(process.pid))
            # SIGTERM to tritonserver alone first: it then unloads models and reaps its stubs itself.
            # Whatever outlived it (stubs of a server that died or hung) gets a short grace, then SIGKILL.
            survivors = stop_group(
                process, name="tritonserver", grace_s=self._stop_timeout_s, kill_after_s=2.0
            )
            if not survivors:
                remove_shm_regions(self._shm_regions)
            logger.info("tritonserver stopped (exit code %s)", process.returncode)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if not self._keep_run_dir and self._run_dir is not None and self._final_log is None:
            # The log outlives the temp dir so callers can still inspect it after stop().
            self._final_log = self.log_text()
            shutil.rmtree(self._run_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
