"""The feather band found on packed bits is feather_alpha's band, pixel for pixel and weight for weight."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxfill.inpaint.feather import blend, copy_pixels, distance_weights, feather_band
from fluxfill.inpaint.geometry import feather_alpha


@st.composite
def masks(draw: st.DrawFn) -> np.ndarray:
    """Masks of any size (widths off the byte boundary too), sparse dots to solid blocks, at the edges."""
    height, width = draw(st.integers(1, 40)), draw(st.integers(1, 70))
    density = draw(st.sampled_from([0.0, 0.01, 0.05, 0.3, 0.9, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).random((height, width)) < density


@settings(max_examples=300, deadline=None)
@given(masks(), st.integers(0, 12))
def test_the_band_and_its_weights_are_feather_alphas(mask: np.ndarray, feather: int) -> None:
    alpha = feather_alpha(mask, feather)
    band = feather_band(mask, feather)
    rows, cols = np.nonzero((alpha > 0) & (alpha < 1))
    assert np.array_equal(band.rows, rows)
    assert np.array_equal(band.cols, cols)
    assert np.array_equal(band.weights, alpha[rows, cols])


def test_a_dot_grows_a_square_ramp() -> None:
    mask = np.zeros((21, 21), bool)
    mask[10, 10] = True
    band = feather_band(mask, 3)
    alpha = np.zeros(mask.shape, np.float32)
    alpha[band.rows, band.cols] = band.weights
    # Chebyshev rings around the dot: 3/4, 2/4, 1/4, then nothing.
    assert alpha[10, 11] == alpha[9, 9] == np.float32(0.75)
    assert alpha[12, 8] == np.float32(0.5)
    assert alpha[13, 13] == alpha[7, 10] == np.float32(0.25)
    assert alpha[14, 10] == 0.0
    assert alpha[10, 10] == 0.0, "the mask itself is not in the band"
    assert list(distance_weights(3)) == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_pixels_are_copied_whole_into_a_turned_view_and_blended_by_weight() -> None:
    stored = np.zeros((4, 6, 3), np.uint8)
    upright = np.rot90(stored, -1)  # a view, 6 x 4, as a turned photo is held
    source = np.arange(6 * 4 * 3, dtype=np.uint8).reshape(6, 4, 3)
    where = np.zeros((6, 4), bool)
    where[1, 2] = where[5, 0] = True
    copy_pixels(upright, source, where)
    assert np.array_equal(upright[where], source[where])
    assert not upright[~where].any()
    mask = np.zeros((6, 4), bool)
    mask[2, 1] = True
    band = feather_band(mask, 1)
    original = np.full((6, 4, 3), 100, np.uint8)
    generated = np.full((6, 4, 3), 200, np.uint8)
    blend(upright, original, generated, band)
    assert (upright[band.rows, band.cols] == 150).all()  # half way, one step from the mask
    assert stored[2, 1].tolist() == [150, 150, 150], "written through the view into the stored grid"
