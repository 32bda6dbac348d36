"""Crop, working size, feathering and compositing at awkward sizes."""

import numpy as np
import pytest

from fluxfill.inpaint.geometry import (
    Box,
    composite,
    feather_alpha,
    mask_bounding_box,
    plan_crop,
    working_size,
)
from tests.support import within_distance


@pytest.mark.parametrize(
    ("width", "height"), [(333, 517), (64, 2000), (2000, 64), (8, 8), (4000, 3000), (1, 1), (17, 9000)]
)
@pytest.mark.parametrize(("min_pixels", "max_pixels"), [(262_144, 1_048_576), (256, 256), (65_536, 65_536)])
def test_working_size_is_multiple_of_16_within_bounds_and_keeps_aspect(
    width: int, height: int, min_pixels: int, max_pixels: int
) -> None:
    w, h = working_size(width, height, min_pixels, max_pixels)
    assert w % 16 == 0
    assert h % 16 == 0
    assert w * h <= max_pixels
    if 1 / 8 < width / height < 8 and max_pixels >= 65_536:
        # Aspect kept up to the rounding to 16 pixels (a 16x16 budget cannot keep any aspect).
        assert abs(w / h - width / height) / (width / height) < 0.25
        assert w * h >= min(min_pixels, max_pixels) * 0.6


def test_working_size_leaves_a_fitting_crop_alone() -> None:
    assert working_size(512, 320, 65_536, 1_048_576) == (512, 320)


def test_bounding_box_of_empty_mask_is_none() -> None:
    assert mask_bounding_box(np.zeros((5, 7), bool)) is None


def test_bounding_box_is_tight_and_exclusive() -> None:
    mask = np.zeros((10, 20), bool)
    mask[3:5, 7:12] = True
    assert mask_bounding_box(mask) == Box(7, 3, 12, 5)


@pytest.mark.parametrize(
    ("shape", "rows", "cols"),
    [
        ((517, 333), slice(0, 40), slice(0, 30)),  # top-left corner
        ((517, 333), slice(480, 517), slice(300, 333)),  # bottom-right corner
        ((2000, 64), slice(900, 1100), slice(0, 64)),  # spans the full width
        ((8, 8), slice(2, 5), slice(2, 5)),
        ((64, 2000), slice(10, 20), slice(1990, 2000)),
    ],
)
def test_crop_contains_mask_and_feather_band_and_stays_inside_image(
    shape: tuple[int, int], rows: slice, cols: slice
) -> None:
    mask = np.zeros(shape, bool)
    mask[rows, cols] = True
    feather = 6
    plan = plan_crop(
        mask, crop_to_mask=True, margin_fraction=0.1, feather=feather, min_pixels=256, max_pixels=65_536
    )
    assert plan is not None
    box = plan.box
    assert 0 <= box.left < box.right <= shape[1]
    assert 0 <= box.top < box.bottom <= shape[0]
    band = within_distance(mask, feather)
    inside = np.zeros(shape, bool)
    inside[box.slices()] = True
    assert not (band & ~inside).any(), "the feather band must lie inside the crop"


def test_full_frame_mode_denoises_the_whole_image() -> None:
    mask = np.zeros((300, 451), bool)
    mask[10:20, 10:20] = True
    plan = plan_crop(
        mask, crop_to_mask=False, margin_fraction=0.3, feather=8, min_pixels=256, max_pixels=1 << 20
    )
    assert plan is not None
    assert plan.box == Box(0, 0, 451, 300)


def test_crop_is_much_smaller_than_frame_for_a_small_mask() -> None:
    mask = np.zeros((3000, 4000), bool)
    mask[1000:1200, 2000:2300] = True
    plan = plan_crop(
        mask, crop_to_mask=True, margin_fraction=0.3, feather=8, min_pixels=256, max_pixels=1 << 20
    )
    assert plan is not None
    assert plan.box.area < 0.05 * 3000 * 4000


@pytest.mark.parametrize("feather", [0, 1, 3, 8])
def test_feather_ramps_to_zero_exactly_at_the_band_edge(feather: int) -> None:
    mask = np.zeros((40, 50), bool)
    mask[10:20, 0:15] = True  # touches the left border
    alpha = feather_alpha(mask, feather)
    assert (alpha[mask] == 1.0).all()
    band = within_distance(mask, feather)
    assert (alpha[~band] == 0.0).all()
    assert (alpha[band & ~mask] > 0.0).all()
    assert (alpha[band & ~mask] < 1.0).all()


def test_composite_keeps_original_bytes_where_alpha_is_zero() -> None:
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    generated = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    alpha = np.zeros((20, 30), np.float32)
    alpha[5:10, 5:10] = 1.0
    alpha[5:10, 10:12] = 0.5
    out = composite(original, generated, alpha)
    keep = alpha == 0
    assert np.array_equal(out[keep], original[keep])
    assert np.array_equal(out[5:10, 5:10], generated[5:10, 5:10])
    half = (original[5:10, 10:12].astype(int) + generated[5:10, 10:12].astype(int)) / 2
    assert np.abs(out[5:10, 10:12] - half).max() <= 0.5 + 1e-6
