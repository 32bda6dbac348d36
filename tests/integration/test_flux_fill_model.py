"""flux_fill on a real tritonserver: the contract over HTTP and gRPC, and every refusal."""

from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from fluxfill.client.errors import InvalidInputError
from fluxfill.client.inference import FluxFillClient, contract_arrays
from fluxfill.client.local_server import LocalTritonServer
from tests.support import within_distance

pytestmark = pytest.mark.integration

FEATHER = 8  # the shipped feather_pixels


def photo(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(height * 7919 + width).integers(0, 256, (height, width, 3), dtype=np.uint8)


def box_mask(height: int, width: int, rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[rows, cols] = 255
    return mask


def beyond_feather(mask: np.ndarray) -> np.ndarray:
    return ~within_distance(mask >= 128, FEATHER)


@pytest.fixture(scope="module")
def grpc(flux_server: LocalTritonServer) -> Any:
    return FluxFillClient(flux_server.grpc_url, "grpc")


@pytest.fixture(scope="module")
def http(flux_server: LocalTritonServer) -> Any:
    return FluxFillClient(flux_server.http_url, "http")


def test_http_and_grpc_give_bitwise_identical_output_for_the_same_seed(grpc: Any, http: Any) -> None:
    image, mask = photo(120, 200), box_mask(120, 200, slice(30, 90), slice(50, 150))
    over_grpc = grpc.inpaint(image, mask, "a red ball", steps=3, seed=1234)
    over_http = http.inpaint(image, mask, "a red ball", steps=3, seed=1234)
    assert over_grpc.seed == over_http.seed == 1234
    assert np.array_equal(over_grpc.image, over_http.image)
    assert not np.array_equal(over_grpc.image, image), "the masked area must be repainted"


def test_different_seeds_give_different_images(grpc: Any) -> None:
    image, mask = photo(64, 64), box_mask(64, 64, slice(10, 50), slice(10, 50))
    first = grpc.inpaint(image, mask, "x", seed=1).image
    second = grpc.inpaint(image, mask, "x", seed=2).image
    assert not np.array_equal(first, second)


def test_absent_seed_is_random_and_reported(grpc: Any) -> None:
    image, mask = photo(48, 48), box_mask(48, 48, slice(0, 16), slice(0, 16))
    seeds = {grpc.inpaint(image, mask, "x").seed for _ in range(3)}
    assert len(seeds) == 3


@pytest.mark.parametrize(
    ("height", "width", "rows", "cols"),
    [
        (333, 517, slice(100, 200), slice(0, 80)),  # odd size, mask touching the left border
        (64, 2000, slice(0, 64), slice(1900, 2000)),  # extreme aspect, mask at a corner
        (8, 8, slice(2, 6), slice(2, 6)),  # smaller than one latent patch
        (600, 800, slice(250, 300), slice(350, 420)),  # small mask on a larger photo
    ],
)
def test_output_has_input_size_and_unmasked_pixels_are_unchanged(
    grpc: Any, height: int, width: int, rows: slice, cols: slice
) -> None:
    image, mask = photo(height, width), box_mask(height, width, rows, cols)
    result = grpc.inpaint(image, mask, "a hat", seed=5)
    assert result.image.shape == (height, width, 3)
    assert result.image.dtype == np.uint8
    untouched = beyond_feather(mask)
    assert np.array_equal(result.image[untouched], image[untouched])
    assert not np.array_equal(result.image[mask >= 128], image[mask >= 128])


def test_empty_mask_returns_the_input_unchanged(http: Any) -> None:
    image = photo(90, 70)
    result = http.inpaint(image, np.zeros((90, 70), np.uint8), "anything", seed=3)
    assert np.array_equal(result.image, image)
    assert result.seed == 3


def raw_infer(server: LocalTritonServer, arrays: dict[str, np.ndarray], datatypes: dict[str, str]) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    inputs = []
    for name, array in arrays.items():
        tensor = httpclient.InferInput(name, list(array.shape), datatypes[name])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    client.infer("flux_fill", inputs)


VALID = contract_arrays(photo(32, 32), box_mask(32, 32, slice(4, 20), slice(4, 20)), "a cat")
TYPES = {
    "IMAGE": "UINT8",
    "MASK": "UINT8",
    "PROMPT": "BYTES",
    "STEPS": "INT32",
    "GUIDANCE": "FP32",
    "SEED": "INT64",
}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"MASK": np.zeros((16, 32), np.uint8)},
            "MASK: must have shape [height, width] = [32, 32] like IMAGE",
        ),
        ({"IMAGE": np.zeros((0, 32, 3), np.uint8)}, "IMAGE: is empty"),
        ({"IMAGE": np.zeros((32, 32, 4), np.uint8)}, None),  # Triton itself refuses the declared [-1,-1,3]
        ({"STEPS": np.array([0], np.int32)}, "STEPS: must be between 1 and 100, got 0"),
        ({"STEPS": np.array([101], np.int32)}, "STEPS: must be between 1 and 100, got 101"),
        ({"GUIDANCE": np.array([np.inf], np.float32)}, "GUIDANCE: must be between 0 and 100"),
        ({"SEED": np.array([-5], np.int64)}, "SEED: must be between 0 and"),
        ({"PROMPT": np.array([b"\xc3\x28"], dtype=object)}, "PROMPT: is not valid UTF-8"),
        ({"IMAGE": np.zeros((8000, 7000, 3), np.uint8)}, "IMAGE: has 56000000 pixels"),
        # Within the 4,096 bytes, beyond the 512 tokens T5 reads ("a" is one token of the tiny vocabulary).
        (
            {"PROMPT": np.array([b"a " * 600], dtype=object)},
            "PROMPT: is 601 tokens long; the model reads at most 512",
        ),
    ],
)
def test_invalid_input_is_invalid_arg_with_message_and_server_keeps_serving(
    flux_server: LocalTritonServer, grpc: Any, changes: dict[str, np.ndarray], message: str | None
) -> None:
    arrays = {**VALID, **changes}
    if "IMAGE" in changes and "MASK" not in changes and changes["IMAGE"].ndim == 3:
        arrays["MASK"] = np.zeros(changes["IMAGE"].shape[:2], np.uint8)
    with pytest.raises(InferenceServerException) as caught:
        raw_infer(flux_server, arrays, TYPES)
    assert caught.value.status() == "400"
    if message is not None:
        assert message in caught.value.message()
    after = grpc.inpaint(VALID["IMAGE"], VALID["MASK"], "a cat", seed=9)
    assert after.image.shape == (32, 32, 3)


def test_missing_required_input_is_refused(flux_server: LocalTritonServer) -> None:
    arrays = {name: array for name, array in VALID.items() if name != "MASK"}
    with pytest.raises(InferenceServerException) as caught:
        raw_infer(flux_server, arrays, TYPES)
    assert caught.value.status() == "400"
    assert "MASK" in caught.value.message()


def test_client_maps_grpc_invalid_argument_to_invalid_input(grpc: Any) -> None:
    with pytest.raises(InvalidInputError, match="MASK: must have shape"):
        grpc.inpaint(photo(32, 32), np.zeros((10, 10), np.uint8), "x")


def test_grpc_invalid_argument_status(flux_server: LocalTritonServer) -> None:
    client = grpcclient.InferenceServerClient(flux_server.grpc_url)
    bad = {**VALID, "STEPS": np.array([0], np.int32)}
    inputs = []
    for name, array in bad.items():
        tensor = grpcclient.InferInput(name, list(array.shape), TYPES[name])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("flux_fill", inputs)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "STEPS: must be between 1 and 100, got 0" in caught.value.message()
