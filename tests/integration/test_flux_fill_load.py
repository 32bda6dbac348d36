"""Loading flux_fill: GGUF weights serve, and every failed load is UNAVAILABLE with its reason."""

from pathlib import Path

import numpy as np
import pytest

from fluxfill.client.errors import ServiceUnavailableError
from fluxfill.client.inference import FluxFillClient
from fluxfill.inpaint.tiny import TinyModel
from fluxfill.inpaint.weights import file_sha256
from tests.integration.conftest import ServerFactory

pytestmark = pytest.mark.integration


def test_gguf_transformer_with_matching_sha256_serves(
    start_flux_server: ServerFactory, tiny_model: TinyModel
) -> None:
    server = start_flux_server(
        gguf_file=str(tiny_model.gguf_file), weights_sha256=file_sha256(tiny_model.gguf_file)
    )
    image = np.full((64, 96, 3), 128, np.uint8)
    mask = np.zeros((64, 96), np.uint8)
    mask[16:48, 32:64] = 255
    with FluxFillClient(server.http_url, "http") as client:
        result = client.inpaint(image, mask, "a ball", seed=11)
    assert result.image.shape == (64, 96, 3)
    assert not np.array_equal(result.image[mask > 0], image[mask > 0])
    assert "TINY TEST MODEL" in server.log_text()


def test_checksum_mismatch_is_unavailable_with_reason(
    start_flux_server: ServerFactory, tiny_model: TinyModel
) -> None:
    server = start_flux_server(
        require_ready=False, gguf_file=str(tiny_model.gguf_file), weights_sha256="0" * 64
    )
    state = server.model_states()["flux_fill_stream"]
    assert state.state == "UNAVAILABLE"
    assert f"weights_sha256 mismatch for '{tiny_model.gguf_file}'" in state.reason
    assert "expected " + "0" * 64 in state.reason
    # Triton keeps answering: the model is just not ready, and a request says so.
    with FluxFillClient(server.grpc_url, "grpc") as client, pytest.raises(ServiceUnavailableError):
        client.inpaint(np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16), np.uint8), "x")


def test_missing_weights_bad_parameter_and_log_say_why(
    start_flux_server: ServerFactory, tmp_path: Path
) -> None:
    server = start_flux_server(
        require_ready=False, weights_dir=str(tmp_path / "no-such-weights"), dtype="fp8"
    )
    reason = server.model_states()["flux_fill_stream"].reason
    # The parameter is checked before the weights are looked for: the first problem is the one reported.
    assert (
        "flux_fill failed to load: parameter 'dtype': must be one of auto, bfloat16, float16, float32"
        in reason
    )
    assert "parameter 'dtype'" in server.log_text()


def test_missing_weights_dir_is_named(start_flux_server: ServerFactory, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-weights"
    server = start_flux_server(require_ready=False, weights_dir=str(missing))
    state = server.model_states()["flux_fill_stream"]
    assert state.state == "UNAVAILABLE"
    assert f"weights_dir '{missing}' is not a directory" in state.reason


def test_missing_python_packages_are_unavailable_with_the_import_error(tiny_model: TinyModel) -> None:
    from fluxfill.client.local_server import LocalTritonServer
    from tests.support import MODEL_REPOSITORY

    # Without our venv first on PATH the stub's Python has none of the model's packages.
    parameters = {"flux_fill_stream": {"weights_dir": str(tiny_model.pipeline_dir)}}
    with LocalTritonServer(MODEL_REPOSITORY, parameters=parameters, env={"PATH": "/usr/bin:/bin"}) as server:
        state = server.model_states()["flux_fill_stream"]
    assert state.state == "UNAVAILABLE"
    assert "No module named" in state.reason
