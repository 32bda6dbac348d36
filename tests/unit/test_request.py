"""Every malformed input is refused with the tensor's name and a specific reason."""

import numpy as np
import pytest

from fluxfill.inpaint.contract import INPUTS, MAX_PROMPT_BYTES, MAX_SEED
from fluxfill.inpaint.errors import InvalidInputError, code_for_message
from fluxfill.inpaint.request import build_request
from tests.support import make_config

CONFIG = make_config(max_input_pixels="10000", max_steps="50", default_prompt="fill it")


def valid_inputs(**changes: np.ndarray | None) -> dict[str, np.ndarray | None]:
    inputs: dict[str, np.ndarray | None] = {
        "IMAGE": np.zeros((20, 30, 3), np.uint8),
        "MASK": np.full((20, 30), 255, np.uint8),
        "PROMPT": np.array([b"a red ball"], dtype=object),
        "STEPS": None,
        "GUIDANCE": None,
        "SEED": None,
    }
    inputs.update(changes)
    return inputs


def test_defaults_fill_absent_optional_inputs() -> None:
    request = build_request(valid_inputs(PROMPT=np.array([b"  "], dtype=object)), CONFIG)
    assert request.prompt == "fill it"
    assert request.steps == CONFIG.default_steps
    assert request.guidance == CONFIG.default_guidance
    assert 0 <= request.seed <= MAX_SEED


def test_explicit_values_are_used() -> None:
    request = build_request(
        valid_inputs(
            STEPS=np.array([4], np.int32),
            GUIDANCE=np.array([3.5], np.float32),
            SEED=np.array([MAX_SEED], np.int64),
        ),
        CONFIG,
    )
    assert (request.steps, request.guidance, request.seed, request.prompt) == (4, 3.5, MAX_SEED, "a red ball")


@pytest.mark.parametrize(("asked", "applied"), [(None, 300.0), (12.5, 12.5), (599.0, 300.0)])
def test_time_limit_is_the_callers_capped_by_the_models(asked: float | None, applied: float) -> None:
    timeout = None if asked is None else np.array([asked], np.float32)
    request = build_request(valid_inputs(TIMEOUT_S=timeout), make_config(max_run_seconds="300"))
    assert request.time_limit_s == applied


@pytest.mark.parametrize("asked", [0.0, -1.0, np.inf, 1e6])
def test_time_limit_out_of_range_is_refused(asked: float) -> None:
    with pytest.raises(InvalidInputError, match=r"TIMEOUT_S: must be between 0\.001 and 86400"):
        build_request(valid_inputs(TIMEOUT_S=np.array([asked], np.float32)), CONFIG)


def test_mask_threshold_is_128() -> None:
    mask = np.zeros((20, 30), np.uint8)
    mask[0, 0], mask[0, 1], mask[0, 2] = 127, 128, 255
    request = build_request(valid_inputs(MASK=mask), CONFIG)
    assert request.mask[0, :3].tolist() == [False, True, True]
    assert request.mask.sum() == 2


def test_random_seeds_differ_between_requests() -> None:
    seeds = {build_request(valid_inputs(), CONFIG).seed for _ in range(5)}
    assert len(seeds) > 1


@pytest.mark.parametrize(
    ("changes", "tensor", "reason"),
    [
        ({"IMAGE": None}, "IMAGE", "is required"),
        ({"IMAGE": np.zeros((20, 30, 3), np.float32)}, "IMAGE", "must be UINT8"),
        ({"IMAGE": np.zeros((20, 30, 4), np.uint8)}, "IMAGE", "[height, width, 3]"),
        ({"IMAGE": np.zeros((20, 30), np.uint8)}, "IMAGE", "[height, width, 3]"),
        ({"IMAGE": np.zeros((0, 30, 3), np.uint8)}, "IMAGE", "is empty"),
        ({"IMAGE": np.zeros((101, 100, 3), np.uint8)}, "IMAGE", "the limit is 10000"),
        ({"MASK": None}, "MASK", "is required"),
        ({"MASK": np.zeros((30, 20), np.uint8)}, "MASK", "like IMAGE, got [30, 20]"),
        ({"MASK": np.zeros((20, 30, 1), np.uint8)}, "MASK", "like IMAGE"),
        ({"MASK": np.zeros((20, 30), np.int32)}, "MASK", "must be UINT8"),
        ({"PROMPT": None}, "PROMPT", "is required"),
        ({"PROMPT": np.array([b"a", b"b"], dtype=object)}, "PROMPT", "exactly one value"),
        ({"PROMPT": np.array([b"\xff\xfe"], dtype=object)}, "PROMPT", "not valid UTF-8"),
        ({"PROMPT": np.array([b"x" * (MAX_PROMPT_BYTES + 1)], dtype=object)}, "PROMPT", "the limit is"),
        ({"PROMPT": np.array([3], dtype=np.int32)}, "PROMPT", "must be BYTES"),
        ({"STEPS": np.array([0], np.int32)}, "STEPS", "between 1 and 50, got 0"),
        ({"STEPS": np.array([51], np.int32)}, "STEPS", "between 1 and 50, got 51"),
        ({"STEPS": np.array([1.5], np.float32)}, "STEPS", "integer tensor"),
        ({"GUIDANCE": np.array([np.nan], np.float32)}, "GUIDANCE", "between 0 and 100"),
        ({"GUIDANCE": np.array([-1.0], np.float32)}, "GUIDANCE", "between 0 and 100"),
        ({"GUIDANCE": np.array([3], np.int32)}, "GUIDANCE", "float tensor"),
        ({"SEED": np.array([-1], np.int64)}, "SEED", "between 0 and"),
        ({"SEED": np.array([1, 2], np.int64)}, "SEED", "exactly one value"),
    ],
)
def test_invalid_input_names_tensor_and_reason(
    changes: dict[str, np.ndarray | None], tensor: str, reason: str
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        build_request(valid_inputs(**changes), CONFIG)
    assert caught.value.tensor == tensor
    assert caught.value.code == "INVALID_ARG"
    assert str(caught.value).startswith(f"{tensor}: ")
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("MASK: must have shape [height, width]", "INVALID_ARG"),
        ("TIMEOUT_S: must be between 0.001 and 300, got 0", "INVALID_ARG"),
        ("cancelled by the caller after step 2 of 9", "CANCELLED"),
        ("deadline exceeded: stopped after step 3 of 9", "UNAVAILABLE"),
        ("Exceeds maximum queue size", "UNAVAILABLE"),
        ("Request for unknown model: 'flux_fill_stream' has no available versions", "UNAVAILABLE"),
        ("internal error: RuntimeError: CUDA out of memory", "INTERNAL"),
        ("STEPSX: not an input name", "INTERNAL"),
    ],
)
def test_error_code_is_recovered_from_a_message_that_crossed_bls(message: str, code: str) -> None:
    assert code_for_message(message, tuple(spec.name for spec in INPUTS)) == code
