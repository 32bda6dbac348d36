"""Validated inpainting requests, built from raw named arrays at the boundary."""

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fluxfill.inpaint.config import ModelConfig
from fluxfill.inpaint.contract import MASK_THRESHOLD, MAX_PROMPT_BYTES, MAX_SEED, MAX_TIMEOUT_S
from fluxfill.inpaint.errors import InvalidInputError
from fluxfill.inpaint.geometry import BoolArray, UInt8Array

RawInputs = Mapping[str, npt.NDArray[np.generic] | None]


@dataclass(frozen=True)
class InpaintRequest:
    """One inpainting job with every default resolved."""

    image: UInt8Array
    mask: BoolArray
    prompt: str
    steps: int
    guidance: float
    seed: int
    time_limit_s: float | None = None


def build_request(inputs: RawInputs, config: ModelConfig) -> InpaintRequest:
    """Validate raw input arrays (by tensor name) and resolve defaults; raise `InvalidInputError`."""
    image = _image(inputs.get("IMAGE"), config.max_input_pixels)
    mask = _mask(inputs.get("MASK"), image.shape[0], image.shape[1])
    prompt = _prompt(inputs.get("PROMPT")) or config.default_prompt
    steps = _optional_int(inputs.get("STEPS"), "STEPS", 1, config.max_steps)
    guidance = _optional_float(inputs.get("GUIDANCE"), "GUIDANCE", 0.0, 100.0)
    seed = _optional_int(inputs.get("SEED"), "SEED", 0, MAX_SEED)
    timeout = _optional_float(inputs.get("TIMEOUT_S"), "TIMEOUT_S", 0.001, MAX_TIMEOUT_S)
    return InpaintRequest(
        image=image,
        mask=mask,
        prompt=prompt,
        steps=config.default_steps if steps is None else steps,
        guidance=config.default_guidance if guidance is None else guidance,
        seed=secrets.randbelow(MAX_SEED + 1) if seed is None else seed,
        # A caller's limit can only shorten the model's own: asking for more is not an error.
        time_limit_s=config.max_run_seconds if timeout is None else min(timeout, config.max_run_seconds),
    )


def _image(array: npt.NDArray[np.generic] | None, max_pixels: int) -> UInt8Array:
    if array is None:
        raise InvalidInputError("IMAGE", "is required")
    if array.dtype != np.uint8:
        raise InvalidInputError("IMAGE", f"must be UINT8, got {array.dtype}")
    if array.ndim != 3 or array.shape[2] != 3:
        raise InvalidInputError("IMAGE", f"must have shape [height, width, 3] (RGB), got {list(array.shape)}")
    height, width = array.shape[0], array.shape[1]
    if height == 0 or width == 0:
        raise InvalidInputError("IMAGE", f"is empty ({height}x{width})")
    if height * width > max_pixels:
        raise InvalidInputError(
            "IMAGE", f"has {height * width} pixels ({width}x{height}); the limit is {max_pixels}"
        )
    return np.ascontiguousarray(array, dtype=np.uint8)


def _mask(array: npt.NDArray[np.generic] | None, height: int, width: int) -> BoolArray:
    if array is None:
        raise InvalidInputError("MASK", "is required")
    if array.dtype != np.uint8:
        raise InvalidInputError("MASK", f"must be UINT8, got {array.dtype}")
    if array.shape != (height, width):
        raise InvalidInputError(
            "MASK", f"must have shape [height, width] = {[height, width]} like IMAGE, got {list(array.shape)}"
        )
    return np.asarray(array, dtype=np.uint8) >= MASK_THRESHOLD


def _single(array: npt.NDArray[np.generic], name: str) -> Any:
    if array.size != 1:
        raise InvalidInputError(name, f"must hold exactly one value, got shape {list(array.shape)}")
    return array.reshape(-1)[0]


def _prompt(array: npt.NDArray[np.generic] | None) -> str:
    if array is None:
        raise InvalidInputError("PROMPT", "is required (send an empty string for the default prompt)")
    value = _single(array, "PROMPT")
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes):
        raise InvalidInputError("PROMPT", f"must be BYTES, got {array.dtype}")
    if len(value) > MAX_PROMPT_BYTES:
        raise InvalidInputError("PROMPT", f"is {len(value)} bytes; the limit is {MAX_PROMPT_BYTES}")
    try:
        return value.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidInputError("PROMPT", "is not valid UTF-8") from None


def _optional_int(array: npt.NDArray[np.generic] | None, name: str, low: int, high: int) -> int | None:
    if array is None:
        return None
    if not np.issubdtype(array.dtype, np.integer):
        raise InvalidInputError(name, f"must be an integer tensor, got {array.dtype}")
    value = int(_single(array, name))
    if not low <= value <= high:
        raise InvalidInputError(name, f"must be between {low} and {high}, got {value}")
    return value


def _optional_float(
    array: npt.NDArray[np.generic] | None, name: str, low: float, high: float
) -> float | None:
    if array is None:
        return None
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidInputError(name, f"must be a float tensor, got {array.dtype}")
    value = float(_single(array, name))
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidInputError(name, f"must be between {low:g} and {high:g}, got {value:g}")
    return value
