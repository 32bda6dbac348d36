"""Property tests: any tensors are either a valid request or refused with a specific error; the engine
keeps every pixel beyond the feathered mask, whatever the size and mask."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fluxfill.inpaint.engine import InpaintEngine
from fluxfill.inpaint.errors import InvalidInputError
from fluxfill.inpaint.request import InpaintRequest, build_request
from tests.support import make_config, within_distance
from tests.unit.fakes import PaintingDenoiser

CONFIG = make_config(max_input_pixels="4096", feather_pixels="3", min_working_pixels="256")
DTYPES = st.sampled_from([np.uint8, np.int8, np.int32, np.int64, np.float32, np.float64, np.bool_])
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=40)


def any_array() -> st.SearchStrategy[np.ndarray]:
    return DTYPES.flatmap(lambda dtype: hnp.arrays(dtype, SHAPES))


def any_prompt() -> st.SearchStrategy[np.ndarray]:
    as_bytes = st.lists(st.binary(max_size=64), min_size=0, max_size=3).map(
        lambda v: np.array(v, dtype=object)
    )
    return st.one_of(as_bytes, any_array())


def request_or_refusal(inputs: dict[str, np.ndarray | None]) -> InpaintRequest | InvalidInputError:
    """Anything but these two outcomes propagates and fails the test."""
    try:
        return build_request(inputs, CONFIG)
    except InvalidInputError as error:
        return error


@settings(max_examples=300, deadline=None)
@given(
    image=any_array(),
    mask=any_array(),
    prompt=any_prompt(),
    steps=st.one_of(st.none(), any_array()),
    guidance=st.one_of(st.none(), any_array()),
    seed=st.one_of(st.none(), any_array()),
)
def test_any_tensors_build_a_request_or_are_refused_by_name(
    *,
    image: np.ndarray,
    mask: np.ndarray,
    prompt: np.ndarray,
    steps: np.ndarray | None,
    guidance: np.ndarray | None,
    seed: np.ndarray | None,
) -> None:
    inputs = {
        "IMAGE": image,
        "MASK": mask,
        "PROMPT": prompt,
        "STEPS": steps,
        "GUIDANCE": guidance,
        "SEED": seed,
    }
    outcome = request_or_refusal(inputs)
    if isinstance(outcome, InvalidInputError):
        assert outcome.tensor in inputs
        assert str(outcome).startswith(f"{outcome.tensor}: ")
    else:
        assert outcome.image.shape[:2] == outcome.mask.shape
        assert 1 <= outcome.steps <= CONFIG.max_steps


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 120),
    width=st.integers(1, 120),
    mask_seed=st.integers(0, 2**32 - 1),
    density=st.floats(0.0, 0.2),
)
def test_engine_keeps_every_pixel_beyond_the_feather(
    height: int, width: int, mask_seed: int, density: float
) -> None:
    rng = np.random.default_rng(mask_seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = rng.random((height, width)) < density
    request = InpaintRequest(image=image, mask=mask, prompt="", steps=2, guidance=1.0, seed=0)
    result = InpaintEngine(PaintingDenoiser(), CONFIG).inpaint(request)
    assert result.image.shape == image.shape
    untouched = ~within_distance(mask, CONFIG.feather_pixels)
    assert np.array_equal(result.image[untouched], image[untouched])
