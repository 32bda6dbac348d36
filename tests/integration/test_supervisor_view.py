"""The Triton image's supervisor reading a real tritonserver: what it counts on to tell a dead stub from a
live one, so that it never stops a healthy server (the stand-in server's cases: tests/unit/client)."""

import pytest

from fluxfill.client.local_server import LocalTritonServer
from fluxfill.client.triton_supervisor import python_models, ready_models, stub_processes, unserved_models
from fluxfill.inpaint.contract import MODEL_NAME, STREAM_MODEL_NAME

pytestmark = pytest.mark.integration


def test_every_ready_python_model_of_a_healthy_server_has_its_stub(flux_server: LocalTritonServer) -> None:
    assert flux_server.pid is not None
    python = python_models([f"--model-repository={flux_server.model_repository}"])
    assert python == {MODEL_NAME, STREAM_MODEL_NAME}
    assert ready_models("127.0.0.1", flux_server.http_port) == python
    assert sorted(stub_processes(flux_server.pid).values()) == sorted(python)
    assert unserved_models("127.0.0.1", flux_server.http_port, flux_server.pid, python) == []
