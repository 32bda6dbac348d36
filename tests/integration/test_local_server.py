"""LocalTritonServer against a real tritonserver serving the fixture repository."""

import json
import os
import re
import signal
import socket
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from fluxfill.client.local_server import LocalServerError, LocalTritonServer, ModelUnavailableError
from fluxfill.client.process_groups import group_members
from fluxfill.client.triton_binary import SHM_DIR, TritonNotFoundError, shm_regions, stub_for_running_python
from fluxfill.client.triton_supervisor import STUB_DIED_EXIT_CODE
from tests.support import HTTP2_SETTINGS, answer_every_connection

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).parent / "fixtures" / "model_repository"
STALL_REPOSITORY = Path(__file__).parent / "fixtures" / "stall_repository"
BROKEN_MESSAGE = "broken fixture model refuses to initialize"
OFFSET = 7


def assert_group_gone(pgid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert group_members(pgid) == []


@pytest.fixture(scope="module")
def source_config() -> bytes:
    return (REPOSITORY / "echo" / "config.pbtxt").read_bytes()


@pytest.fixture(scope="module")
def server(source_config: bytes) -> Iterator[LocalTritonServer]:
    del source_config  # read before the server starts, to compare afterwards
    with LocalTritonServer(REPOSITORY, parameters={"echo": {"offset": str(OFFSET)}}) as started:
        yield started


@pytest.fixture(scope="module")
def client(server: LocalTritonServer) -> Iterator[httpclient.InferenceServerClient]:
    triton = httpclient.InferenceServerClient(url=server.http_url)
    yield triton
    triton.close()


def test_ready_model_answers_over_http(
    server: LocalTritonServer, client: httpclient.InferenceServerClient
) -> None:
    assert server.states["echo"].state == "READY"
    data = np.arange(5, dtype=np.int32)
    request = httpclient.InferInput("INPUT", list(data.shape), "INT32")
    request.set_data_from_numpy(data)
    result = client.infer("echo", [request])
    # The offset comes from the parameters override, so this also proves it reached initialize().
    np.testing.assert_array_equal(result.as_numpy("OUTPUT"), data + OFFSET)


def test_failing_initialize_is_unavailable_with_reason(
    server: LocalTritonServer, client: httpclient.InferenceServerClient
) -> None:
    state = server.model_states()["broken"]
    assert state.state == "UNAVAILABLE"
    assert BROKEN_MESSAGE in state.reason
    assert client.is_server_live()
    assert client.is_model_ready("echo")
    assert not client.is_model_ready("broken")


def test_parameters_override_only_touches_the_copy(server: LocalTritonServer, source_config: bytes) -> None:
    assert (REPOSITORY / "echo" / "config.pbtxt").read_bytes() == source_config
    assert f'string_value: "{OFFSET}"' in (server.model_repository / "echo" / "config.pbtxt").read_text()
    assert server.model_repository != REPOSITORY


def test_metrics_endpoint(server: LocalTritonServer) -> None:
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:  # noqa: S310 (local http URL)
        assert 'nv_inference_request_success{model="echo"' in response.read().decode()


def test_require_ready(server: LocalTritonServer) -> None:
    server.require_ready("echo")
    with pytest.raises(ModelUnavailableError, match="broken") as raised:
        server.require_ready("echo", "broken")
    assert raised.value.model == "broken"
    assert BROKEN_MESSAGE in raised.value.reason
    with pytest.raises(ModelUnavailableError, match="missing"):
        server.require_ready("missing")


def test_stop_ends_the_whole_process_group() -> None:
    with LocalTritonServer(REPOSITORY, required_models=["echo"]) as started:
        pgid = started.pid
        assert pgid is not None
        run_dir = started.run_dir
        # tritonserver plus one python backend stub per loaded instance share the group.
        assert len(group_members(pgid)) >= 2
    assert_group_gone(pgid)
    assert not run_dir.exists()
    assert "successfully loaded 'echo'" in started.log_text()
    started.stop()  # idempotent


def test_a_killed_server_leaves_no_shared_memory_behind() -> None:
    """A SIGKILLed tritonserver (a chaos fault, a crashed test) cannot unlink its stubs' shared-memory
    regions: stop() does, or a day of test runs here left 16 GB of them in /dev/shm."""
    with LocalTritonServer(REPOSITORY, required_models=["echo"]) as started:
        pgid = started.pid
        assert pgid is not None
        regions = shm_regions(group_members(pgid))
        assert regions, "each stub is given its region's name"
        assert all((SHM_DIR / name).exists() for name in regions)
        started.signal_group(signal.SIGKILL)
        assert started.wait(30) == -signal.SIGKILL
        assert all((SHM_DIR / name).exists() for name in regions), "killed: nobody unlinked them"
    assert not any((SHM_DIR / name).exists() for name in regions)


def test_failed_start_still_stops(tmp_path: Path) -> None:
    server = LocalTritonServer(REPOSITORY, run_dir=tmp_path / "run", required_models=["broken"])
    with pytest.raises(ModelUnavailableError, match="broken"), server:
        pytest.fail("the context body must not run when a required model is unavailable")
    assert server.pid is None
    # A given run dir is kept, with its log.
    assert BROKEN_MESSAGE in server.log_path.read_text()


@pytest.mark.parametrize("answer", [None, HTTP2_SETTINGS], ids=["silent", "speaks-another-protocol"])
def test_early_exit_reports_log_tail(tmp_path: Path, answer: bytes | None) -> None:
    """Hold the HTTP port so tritonserver cannot bind it and exits during start: silently, or as another
    server's gRPC port answers (its garbled answer to the readiness check escaped as BadStatusLine, an
    unexpected error in `fluxfill stack` instead of the server's reason)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if answer is not None:
            threading.Thread(target=answer_every_connection, args=(taken, answer), daemon=True).start()
        server = LocalTritonServer(REPOSITORY, run_dir=tmp_path, http_port=taken.getsockname()[1])
        with pytest.raises(LocalServerError, match="exited with code") as raised, server:
            pass
    assert "HTTP" in str(raised.value)


def test_missing_stub_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "python_backend_stubs" / "3.8").mkdir(parents=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    with pytest.raises(TritonNotFoundError, match=rf"no python backend stub for Python {version}.*3\.8"):
        stub_for_running_python(tmp_path)


def test_a_stub_hung_holding_the_gil_ends_and_the_supervisor_stops_the_server() -> None:
    """The stall watchdog's Python thread cannot run while a step holds the GIL; its faulthandler backstop
    still ends the stub inside a real tritonserver, and the image's supervisor then stops the server. With the
    image's JSON logs: the dump and the supervisor's line are ERROR entries, as Cloud Logging reads them."""
    supervised = {"supervised": True, "json_logs": True}
    with LocalTritonServer(STALL_REPOSITORY, required_models=["hang"], **supervised) as server:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}", network_timeout=60)
        request = httpclient.InferInput("INPUT", [2], "INT32")
        request.set_data_from_numpy(np.array([1, 2], np.int32))
        with pytest.raises(Exception):  # noqa: B017, PT011 (whatever the dying stub makes of the request)
            client.infer("hang", [request])
        assert server.wait(timeout_s=60) == STUB_DIED_EXIT_CODE
        log = server.log_text()
    errors = [
        str(entry["message"]) for entry in map(json.loads, log.splitlines()) if entry["severity"] == "ERROR"
    ]
    assert any("Timeout (0:00:01.5" in error for error in errors)  # stall_seconds and the margin
    hung_frame = re.compile(r'hang/1/model\.py", line \d+ in execute')
    assert any(hung_frame.search(error) for error in errors), "the hung step's frame is in the log"
    assert any("stub of hang (pid" in error for error in errors)
