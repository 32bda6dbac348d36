"""The bridge reads the served model's crop parameters from tritonserver, sends it only the context, and
stores the result the whole photo gives."""

import io
import time
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fluxfill.bridge.adapters import triton
from fluxfill.bridge.adapters.triton import TritonInpaintModel
from fluxfill.bridge.context import CropGeometry, context_box, plan_context
from fluxfill.bridge.ports import InferenceRequest, InferenceResult
from fluxfill.client.inference import FluxFillClient
from fluxfill.client.local_server import LocalTritonServer
from fluxfill.inpaint.config import parse_model_config
from fluxfill.inpaint.contract import STREAM_MODEL_NAME
from fluxfill.inpaint.geometry import Box, feather_alpha
from tests.integration.bridge.harness import JobSystem, TcpProxy, encode, is_terminal, running_bridge
from tests.support import read_model_config

pytestmark = pytest.mark.integration


def served_geometry(server: LocalTritonServer) -> CropGeometry:
    """From the config.pbtxt the server was started with (its copy of the repository, overrides applied)."""
    config = read_model_config(server.model_repository / STREAM_MODEL_NAME / "config.pbtxt")
    return parse_model_config({k: v.string_value for k, v in config.parameters.items()}).crop_geometry


@pytest.mark.parametrize("protocol", ["grpc-stream", "grpc", "http"])
def test_the_adapter_reads_the_served_models_crop_parameters(
    flux_server: LocalTritonServer, protocol: str
) -> None:
    url = flux_server.http_url if protocol == "http" else flux_server.grpc_url
    geometry = TritonInpaintModel(url, protocol).crop_geometry()
    assert geometry == served_geometry(flux_server)
    # The test server's working sizes differ from the shipped ones: these are the served values.
    assert geometry is not None
    assert geometry.max_working_pixels == 65536


def test_without_a_server_the_parameters_are_unknown_and_nothing_raises() -> None:
    assert TritonInpaintModel("127.0.0.1:1").crop_geometry() is None


class CountingTriton(TritonInpaintModel):
    """The real adapter, counting its reads of the model's configuration."""

    reads = 0

    def _read_geometry(self) -> CropGeometry | None:
        self.reads += 1
        return super()._read_geometry()


def test_the_parameters_are_read_once_and_again_after_triton_was_seen_not_ready(
    flux_server: LocalTritonServer,
) -> None:
    proxy = TcpProxy(flux_server.grpc_port)
    proxy.up()
    try:
        model = CountingTriton(proxy.url)
        expected = served_geometry(flux_server)
        assert model.crop_geometry() == expected
        assert model.crop_geometry() == expected
        assert model.reads == 1, "read once while Triton stays ready"
        proxy.down()
        assert not model.is_ready(timeout_s=2)
        # A failed read is not repeated at every job: whole photos go meanwhile.
        assert model.crop_geometry() is None
        assert model.crop_geometry() is None
        assert model.reads == 2
        proxy.up()
        assert model.is_ready()
        assert model.reads == 2, "a readiness check reads nothing"
        # Triton was away (it may be back reloaded, with other parameters): read again at once.
        assert model.crop_geometry() == expected
        assert model.is_ready()
        assert model.crop_geometry() == expected
        assert model.reads == 3
    finally:
        proxy.down()


class FailingOnceTriton(CountingTriton):
    """The real adapter, whose first read of the model's configuration fails (a timeout, a reply it cannot
    parse) while Triton stays ready."""

    def _read_geometry(self) -> CropGeometry | None:
        if self.reads == 0:
            self.reads += 1
            return None
        return super()._read_geometry()


def test_a_failed_read_is_tried_again_after_a_while_though_triton_stayed_ready(
    flux_server: LocalTritonServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not at every job (each would wait on it), nor never (every job would send whole photos for good)."""
    monkeypatch.setattr(triton, "GEOMETRY_RETRY_S", 1.0)
    model = FailingOnceTriton(flux_server.grpc_url)
    assert model.is_ready()
    assert model.crop_geometry() is None
    assert model.crop_geometry() is None
    assert model.reads == 1, "not tried again at once"
    time.sleep(1.1)
    assert model.is_ready()
    assert model.crop_geometry() == served_geometry(flux_server)
    assert model.reads == 2


class RecordingTriton(TritonInpaintModel):
    """The real adapter, noting the shape of every image it sends."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.sent: list[tuple[int, ...]] = []

    def infer(self, request: InferenceRequest, **kwargs: Any) -> InferenceResult:
        self.sent.append(request.image.shape)
        return super().infer(request, **kwargs)


def png_job(
    jobs: JobSystem, flux_server: LocalTritonServer, image: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """One job through a bridge and tritonserver, its result a PNG: the stored image, and the shapes of the
    images the bridge sent Triton."""
    user, session = jobs.new_job(encode(image), encode(mask))
    triton = RecordingTriton(flux_server.grpc_url)
    with running_bridge(jobs.settings(flux_server.grpc_url, result_format="png"), triton):
        jobs.publish({"userId": user, "sessionId": session, "seed": 5, "steps": 2, "prompt": "a cat"})
        document = jobs.wait_for(user, session, is_terminal, timeout_s=60)
    assert document["status"] == "done", document
    stored = np.asarray(Image.open(io.BytesIO(jobs.download(user, session, "edited.png"))))
    return stored, triton.sent


def test_a_job_through_tritonserver_stores_what_the_whole_photo_gives(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    image = np.random.default_rng(11).integers(0, 256, (360, 480, 3), dtype=np.uint8)
    mask = np.zeros((360, 480), np.uint8)
    mask[250:300, 380:440] = 255
    geometry = served_geometry(flux_server)
    stored, (sent,) = png_job(jobs, flux_server, image, mask)
    with FluxFillClient(flux_server.grpc_url) as client:
        whole = client.inpaint(image, mask, "a cat", seed=5, steps=2)
    assert np.array_equal(stored, whole.image)
    assert not np.array_equal(stored, image), "the edit happened"
    box = context_box(mask, geometry)
    assert box is not None
    assert sent == (box.height, box.width, 3)
    assert box.area < 0.1 * image.shape[0] * image.shape[1]


def test_a_large_crop_goes_reduced_through_tritonserver_and_only_the_feathered_mask_changes(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    rng = np.random.default_rng(12)
    image = rng.integers(0, 256, (900, 1200, 3), dtype=np.uint8)
    mask = np.zeros((900, 1200), np.uint8)
    mask[150:750, 200:1000] = 255
    geometry = served_geometry(flux_server)
    context = plan_context(mask, geometry)
    assert context.reduction >= 2, "the test server's working size is a fraction of this crop"
    stored, (sent_shape,) = png_job(jobs, flux_server, image, mask)
    box = context.box or Box(0, 0, 1200, 900)
    factor = context.reduction
    assert sent_shape == (-(-box.height // factor), -(-box.width // factor), 3)
    assert stored.shape == image.shape
    alpha = feather_alpha(mask >= 128, geometry.feather_pixels)
    assert np.array_equal(stored[alpha == 0], image[alpha == 0])
    changed = np.any(stored != image, axis=2)
    assert changed[alpha == 1].mean() > 0.9, "the model's noise fills the mask"
