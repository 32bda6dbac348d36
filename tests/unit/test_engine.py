"""The engine repaints only the (feathered) mask, at the input's size, through one denoiser call."""

import numpy as np
import pytest

from fluxfill.inpaint.engine import InpaintEngine
from fluxfill.inpaint.errors import CancelledError
from fluxfill.inpaint.request import InpaintRequest
from tests.support import make_config, within_distance
from tests.unit.fakes import PaintingDenoiser


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def request_for(image: np.ndarray, mask: np.ndarray, steps: int = 3) -> InpaintRequest:
    return InpaintRequest(image=image, mask=mask, prompt="a hat", steps=steps, guidance=30.0, seed=7)


def beyond_feather(mask: np.ndarray, feather: int) -> np.ndarray:
    return ~within_distance(mask, feather)


@pytest.mark.parametrize(
    ("height", "width", "rows", "cols"),
    [
        (517, 333, slice(100, 180), slice(50, 120)),
        (2000, 64, slice(0, 300), slice(0, 64)),
        (64, 2000, slice(30, 64), slice(1900, 2000)),
        (8, 8, slice(0, 8), slice(4, 8)),
        (300, 451, slice(0, 300), slice(0, 451)),
    ],
)
@pytest.mark.parametrize("crop_to_mask", ["true", "false"])
def test_output_has_input_size_and_unmasked_pixels_are_bit_identical(
    height: int, width: int, rows: slice, cols: slice, crop_to_mask: str
) -> None:
    denoiser = PaintingDenoiser()
    config = make_config(crop_to_mask=crop_to_mask, feather_pixels="4", min_working_pixels="4096")
    image = photo(height, width)
    mask = np.zeros((height, width), bool)
    mask[rows, cols] = True

    result = InpaintEngine(denoiser, config).inpaint(request_for(image, mask))

    assert result.image.shape == image.shape
    assert result.image.dtype == np.uint8
    untouched = beyond_feather(mask, 4)
    assert np.array_equal(result.image[untouched], image[untouched])
    # Away from the mask's edge the generated colour wins (resizing blurs the edge itself).
    core = mask & beyond_feather(~mask, 3)
    assert core.any()
    assert np.abs(result.image[core].astype(int) - denoiser.colour).max() <= 2


def test_denoiser_sees_working_size_in_multiples_of_16_within_the_pixel_budget() -> None:
    denoiser = PaintingDenoiser()
    config = make_config(max_working_pixels="65536", min_working_pixels="16384")
    mask = np.zeros((3000, 4000), bool)
    mask[1000:1500, 1000:1800] = True
    result = InpaintEngine(denoiser, config).inpaint(request_for(photo(3000, 4000), mask))
    (call,) = denoiser.calls
    height, width, _ = call["shape"]  # type: ignore[misc]
    assert height % 16 == 0
    assert width % 16 == 0
    assert height * width <= 65536
    assert result.working_size == (width, height)
    assert result.denoised_box is not None
    assert 0 < result.denoised_share < 0.2


def test_empty_mask_returns_input_without_running_the_model() -> None:
    denoiser = PaintingDenoiser()
    image = photo(40, 60)
    result = InpaintEngine(denoiser, make_config()).inpaint(request_for(image, np.zeros((40, 60), bool)))
    assert denoiser.calls == []
    assert np.array_equal(result.image, image)
    assert result.denoised_share == 0.0
    assert result.seed == 7


def test_progress_reports_every_step_in_order() -> None:
    seen: list[tuple[int, int]] = []
    mask = np.zeros((64, 64), bool)
    mask[10:20, 10:20] = True
    InpaintEngine(PaintingDenoiser(), make_config()).inpaint(
        request_for(photo(64, 64), mask, steps=5), lambda step, total: seen.append((step, total))
    )
    assert seen == [(0, 5), (1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


def test_a_step_callback_can_cancel_the_run() -> None:
    seen: list[int] = []

    def stop_at_two(step: int, _total: int) -> None:
        seen.append(step)
        if step == 2:
            raise CancelledError("cancelled by the caller")

    mask = np.ones((32, 32), bool)
    with pytest.raises(CancelledError):
        InpaintEngine(PaintingDenoiser(), make_config()).inpaint(
            request_for(photo(32, 32), mask, 10), stop_at_two
        )
    assert seen == [0, 1, 2]
