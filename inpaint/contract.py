"""The model's tensor contract: the one source the model, the client and the docs read.

Kept free of torch and Triton imports (numpy only) so the client and the bridge use it without the model's
dependencies.
`tests/unit/test_contract.py` checks `model_repository/flux_fill/config.pbtxt` against it.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

# Unary inference (HTTP and gRPC); forwards to the streaming model, which holds the weights.
MODEL_NAME = "flux_fill"
# Decoupled: one response per step over a gRPC stream, then the image; its config.pbtxt has the parameters.
STREAM_MODEL_NAME = "flux_fill_stream"
# Triton request priorities: 1 overtakes 2 (the default) in both models' queues.
PRIORITY_URGENT, PRIORITY_BULK = 1, 2
# A mask value at or above this threshold marks a pixel to repaint.
MASK_THRESHOLD = 128
# What a mask of 0s and 1s (a boolean array saved as 8-bit: numpy's, OpenCV's) selects nothing for, said where
# such a mask is refused or warned of.
ZERO_ONE_MASK_HINT = "a mask of 0s and 1s, as a boolean array saved as 8-bit is, needs its 1s at 255"
MAX_SEED = 2**63 - 1
# TIMEOUT_S above one day is a mistake, not a limit: the model refuses it, and our callers send at most this
# (contract_arrays), which no run outlasts (max_run_seconds is at most as much).
MAX_TIMEOUT_S = 86_400.0
# A prompt longer than this (UTF-8 bytes) cannot be meant; T5 only reads max_sequence_length tokens anyway.
# The model refuses more, and the bridge refuses a job asking for more before it downloads anything.
MAX_PROMPT_BYTES = 4096
# The largest photo any configuration of the model takes (its `max_input_pixels` may be set up to this):
# 1.2 GB of RGB. The `fluxfill` commands open photos up to it; the server's own limit is what then counts.
MAX_INPUT_PIXELS_CEILING = 400_000_000


def prompt_problem(prompt: str) -> str | None:
    """Why a prompt cannot be sent (the model's and the job's rule, in one sentence), None when it can.

    A string may hold half of a UTF-16 surrogate pair, which no UTF-8 can carry: JSON's `\\ud83d` escape
    of an app that cut an emoji in two (JavaScript's `slice` counts UTF-16 units), or a command line's byte
    that is not UTF-8 (Python keeps it as one)."""
    try:
        size = len(prompt.encode("utf-8"))
    except UnicodeEncodeError as error:  # only a surrogate fails it
        return (
            f"holds U+{ord(prompt[error.start]):04X} at character {error.start}, half of a UTF-16 surrogate "
            "pair (a character cut in two, or a byte that is not UTF-8): send whole characters"
        )
    if size > MAX_PROMPT_BYTES:
        return f"is {size} bytes of UTF-8; the limit is {MAX_PROMPT_BYTES}"
    return None


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor as Triton declares it (-1 = any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    description: str
    optional: bool = False


INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("IMAGE", "UINT8", (-1, -1, 3), "RGB photo, height x width x 3"),
    TensorSpec("MASK", "UINT8", (-1, -1), f"same height x width as IMAGE; >= {MASK_THRESHOLD} means repaint"),
    TensorSpec(
        "PROMPT",
        "BYTES",
        (1,),
        f"UTF-8 text of at most {MAX_PROMPT_BYTES} bytes and max_sequence_length T5 tokens; empty means the "
        "model's default prompt",
    ),
    TensorSpec("STEPS", "INT32", (1,), "denoising steps; absent means the model's default", optional=True),
    TensorSpec("GUIDANCE", "FP32", (1,), "guidance scale; absent means the model's default", optional=True),
    TensorSpec("SEED", "INT64", (1,), f"0..{MAX_SEED}; absent means a random seed", optional=True),
    TensorSpec(
        "TIMEOUT_S",
        "FP32",
        (1,),
        f"time limit in seconds, 0.001..{MAX_TIMEOUT_S:g}; the model's max_run_seconds caps it",
        optional=True,
    ),
)

OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("IMAGE", "UINT8", (-1, -1, 3), "inpainted RGB image of exactly the input's height and width"),
    TensorSpec("SEED", "INT64", (1,), "the seed actually used"),
)

# flux_fill_stream: every response carries STEP and TOTAL_STEPS; only the final one carries IMAGE and SEED.
STREAM_OUTPUTS: tuple[TensorSpec, ...] = (
    *OUTPUTS,
    TensorSpec("STEP", "INT32", (1,), "denoising steps done (0 and 0 when the mask was empty)"),
    TensorSpec("TOTAL_STEPS", "INT32", (1,), "denoising steps of this run"),
    TensorSpec("PREVIEW", "UINT8", (-1, -1, 3), "low-resolution working crop, every preview_every steps"),
)


def input_spec(name: str) -> TensorSpec:
    """Return the declared input called `name`."""
    return next(spec for spec in INPUTS if spec.name == name)


NUMPY_TYPES: dict[str, type[np.generic]] = {
    "UINT8": np.uint8,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP32": np.float32,
    "BYTES": np.object_,
}


def contract_arrays(
    image: npt.NDArray[np.uint8],
    mask: npt.NDArray[np.uint8],
    prompt: str,
    *,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int | None = None,
    timeout_s: float | None = None,
) -> dict[str, npt.NDArray[Any]]:
    """A request's input tensors by name, typed as declared above; absent optionals are left out.

    Raises ValueError, naming the tensor, for an integer its type cannot hold or a negative seed (numpy would
    raise a bare OverflowError), and for a prompt the model refuses (`prompt_problem`). `timeout_s` is sent as
    at most MAX_TIMEOUT_S.
    """
    problem = prompt_problem(prompt)
    if problem is not None:
        raise ValueError(f"PROMPT: {problem}")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise ValueError(f"SEED: must be 0..{MAX_SEED}, got {seed}")
    if steps is not None and not np.iinfo(np.int32).min <= steps <= np.iinfo(np.int32).max:
        # Only what INT32 cannot carry: the model itself refuses steps out of its range, naming its limits.
        raise ValueError(f"STEPS: must be a 32-bit integer, got {steps}")
    values: dict[str, object] = {
        "IMAGE": image,
        "MASK": mask,
        "PROMPT": [prompt.encode("utf-8")],
        "STEPS": None if steps is None else [steps],
        "GUIDANCE": None if guidance is None else [guidance],
        "SEED": None if seed is None else [seed],
        # A limit beyond the longest the model takes is sent as that (no run lasts longer: max_run_seconds is
        # at most as much): refused, it failed a caller's long timeout as bad input.
        "TIMEOUT_S": None if timeout_s is None else [min(timeout_s, MAX_TIMEOUT_S)],
    }
    return {
        spec.name: np.asarray(values[spec.name], dtype=NUMPY_TYPES[spec.datatype])
        for spec in INPUTS
        if values[spec.name] is not None
    }
