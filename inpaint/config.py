"""The model's typed configuration, parsed once from config.pbtxt `parameters`.

config.pbtxt holds every value; this module holds the schema (names, types, limits, meaning).
A wrong, missing or unknown parameter raises `ConfigError` naming it, which fails the model load.
"""

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal, cast, get_args

from fluxfill.inpaint.contract import MAX_INPUT_PIXELS_CEILING, MAX_TIMEOUT_S
from fluxfill.inpaint.geometry import CropGeometry, parse_buckets

Dtype = Literal["auto", "bfloat16", "float16", "float32"]
OffloadPolicy = Literal["none", "model", "sequential", "auto"]
Quantization = Literal["none", "fp8"]
CompileMode = Literal["off", "regional", "full"]
CompileBackend = Literal["inductor", "eager"]
T5Placement = Literal["device", "cpu"]


class ConfigError(ValueError):
    """A config.pbtxt parameter is missing, unknown or invalid."""

    def __init__(self, parameter: str, problem: str) -> None:
        super().__init__(f"parameter '{parameter}': {problem}")
        self.parameter = parameter


@dataclass(frozen=True)
class ModelConfig:
    """Everything the inpainting core needs to know, validated."""

    weights_dir: Path
    gguf_file: Path | None
    weights_sha256: str | None
    dtype: Dtype
    offload: OffloadPolicy
    default_prompt: str
    default_steps: int
    max_steps: int
    default_guidance: float
    max_input_pixels: int
    crop_to_mask: bool
    crop_margin: float
    feather_pixels: int
    max_working_pixels: int
    min_working_pixels: int
    max_sequence_length: int
    prompt_cache_size: int
    max_run_seconds: float
    stall_seconds: float
    warmup_steps: int
    preview_every: int
    preview_max_side: int
    resolution_buckets: tuple[tuple[int, int], ...]
    transformer_quantization: Quantization
    first_block_cache_threshold: float
    compile: CompileMode
    compile_backend: CompileBackend
    t5_placement: T5Placement

    @property
    def crop_geometry(self) -> CropGeometry:
        """The parameters that decide the crop, on their own (the bridge reads them from Triton too)."""
        return CropGeometry(
            self.crop_to_mask,
            self.crop_margin,
            self.feather_pixels,
            self.min_working_pixels,
            self.max_working_pixels,
            self.resolution_buckets,
        )


# What each parameter means; docs/model.md's configuration table is generated from this and config.pbtxt.
DESCRIPTIONS: dict[str, str] = {
    "weights_dir": "diffusers-format FLUX.1-Fill directory (the transformer too, unless gguf_file is set)",
    "gguf_file": "optional GGUF transformer file used instead of the directory's transformer; empty = none",
    "weights_sha256": "optional sha256 of the GGUF file, else the directory digest; checked at load",
    "dtype": "compute dtype: auto (bfloat16 on GPU, float32 on CPU), bfloat16, float16, float32",
    "offload": "CPU offload: none, model, sequential, auto (none when the model fits in free GPU memory)",
    "default_prompt": "prompt used when a request's PROMPT is empty (the load fails if T5 cannot read all)",
    "default_steps": "denoising steps when a request has no STEPS",
    "max_steps": "largest STEPS a request may ask for",
    "default_guidance": "guidance scale when a request has no GUIDANCE",
    "max_input_pixels": "largest IMAGE (height x width) accepted",
    "crop_to_mask": "true: denoise only the mask's surroundings; false: the full frame",
    "crop_margin": "context added around the mask's bounding box, as a fraction of its longer side",
    "feather_pixels": "width of the blended band outside the mask, in input pixels",
    "max_working_pixels": "the crop is downscaled to at most this many pixels before denoising",
    "min_working_pixels": "a smaller crop is upscaled to at least this many pixels before denoising",
    "max_sequence_length": "T5 prompt tokens (FLUX allows up to 512)",
    "prompt_cache_size": "encoded prompts kept (LRU) so a repeated prompt skips the text encoders; 0 = off",
    "max_run_seconds": "time limit of one run, stopped at the next step; TIMEOUT_S may shorten it",
    "stall_seconds": "a run with no step for this long ends the model's process (a hung GPU cannot be "
    "stopped otherwise; the image's supervisor then restarts Triton); 0 = off",
    "warmup_steps": "steps of the warm-up inference run before the model reports READY; 0 = no warm-up",
    "preview_every": "streaming: attach a low-resolution PREVIEW to every n-th step's response; 0 = never",
    "preview_max_side": "longer side of a PREVIEW image, in pixels",
    "resolution_buckets": "working sizes to snap to, e.g. 1024x1024,1152x896 (empty = exact sizes)",
    "transformer_quantization": "none, or fp8: torchao float8 dynamic quantization of transformer linears",
    "first_block_cache_threshold": "first-block cache: reuse the remaining blocks while the first block's "
    "output changes less than this (0 = off)",
    "compile": "torch.compile the transformer: off, regional (repeated blocks) or full; warmed per bucket",
    "t5_placement": "device, or cpu: after warm-up T5 waits in CPU memory (cached prompts skip it; "
    "needs prompt_cache_size of 1 or more)",
    "compile_backend": "inductor (generates kernels) or eager (graph capture only: debugging, CPU tests)",
}

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _text(value: str) -> str:
    return value


def _path(value: str) -> Path:
    if not value.strip():
        raise ValueError("must be a path, got an empty value")
    path = Path(value)
    # Relative to what? tritonserver's working directory is nobody's guess: refuse it.
    if not path.is_absolute():
        raise ValueError(f"must be an absolute path, got {value!r}")
    return path


def _optional_path(value: str) -> Path | None:
    return _path(value) if value.strip() else None


def _optional_sha256(value: str) -> str | None:
    value = value.strip().lower()
    if not value:
        return None
    if not _SHA256.fullmatch(value):
        raise ValueError("must be 64 hexadecimal characters or empty")
    return value


def _buckets(value: str) -> tuple[tuple[int, int], ...]:
    return parse_buckets(value)


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {value!r}")
        return value

    return parse


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"true", "1", "yes"}:
        return True
    if lowered in {"false", "0", "no"}:
        return False
    raise ValueError(f"must be true or false, got {value!r}")


def _int(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"must be an integer, got {value!r}") from None
        if not low <= number <= high:
            raise ValueError(f"must be between {low} and {high}, got {number}")
        return number

    return parse


def _float(low: float, high: float) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"must be a number, got {value!r}") from None
        if not math.isfinite(number) or not low <= number <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return number

    return parse


_PARSERS: dict[str, Callable[[str], object]] = {
    "weights_dir": _path,
    "gguf_file": _optional_path,
    "weights_sha256": _optional_sha256,
    "dtype": _choice(get_args(Dtype)),
    "offload": _choice(get_args(OffloadPolicy)),
    "default_prompt": _text,
    "default_steps": _int(1, 1000),
    "max_steps": _int(1, 1000),
    "default_guidance": _float(0.0, 100.0),
    "max_input_pixels": _int(1, MAX_INPUT_PIXELS_CEILING),
    "crop_to_mask": _bool,
    "crop_margin": _float(0.0, 10.0),
    "feather_pixels": _int(0, 512),
    "max_working_pixels": _int(16 * 16, 16_777_216),
    "min_working_pixels": _int(16 * 16, 16_777_216),
    "max_sequence_length": _int(1, 512),
    "prompt_cache_size": _int(0, 100_000),
    "max_run_seconds": _float(0.001, MAX_TIMEOUT_S),  # a TIMEOUT_S of MAX_TIMEOUT_S is then no limit
    "stall_seconds": _float(0.0, 86_400.0),
    "warmup_steps": _int(0, 1000),
    "preview_every": _int(0, 1000),
    "preview_max_side": _int(16, 1024),
    "resolution_buckets": _buckets,
    "transformer_quantization": _choice(get_args(Quantization)),
    "first_block_cache_threshold": _float(0.0, 1.0),
    "compile": _choice(get_args(CompileMode)),
    "compile_backend": _choice(get_args(CompileBackend)),
    "t5_placement": _choice(get_args(T5Placement)),
}
PARAMETER_NAMES: tuple[str, ...] = tuple(field.name for field in fields(ModelConfig))


def parse_model_config(parameters: Mapping[str, str]) -> ModelConfig:
    """Build a validated `ModelConfig` from config.pbtxt parameter strings."""
    unknown = sorted(set(parameters) - set(PARAMETER_NAMES))
    if unknown:
        raise ConfigError(unknown[0], f"unknown parameter (known: {', '.join(PARAMETER_NAMES)})")
    values: dict[str, object] = {}
    for name in PARAMETER_NAMES:
        if name not in parameters:
            raise ConfigError(name, "missing from config.pbtxt parameters")
        try:
            values[name] = _PARSERS[name](parameters[name])
        except ValueError as error:
            raise ConfigError(name, str(error)) from None
    config = ModelConfig(**values)  # type: ignore[arg-type]
    _check_relations(config)
    return config


def _check_relations(config: ModelConfig) -> None:
    if config.default_steps > config.max_steps:
        raise ConfigError("default_steps", f"{config.default_steps} exceeds max_steps {config.max_steps}")
    if config.compile != "off" and config.warmup_steps == 0:
        raise ConfigError(
            "warmup_steps", "must be at least 1 when compile is on, or user requests would compile"
        )
    if config.t5_placement == "cpu" and config.prompt_cache_size == 0:
        raise ConfigError(
            "prompt_cache_size",
            "must be at least 1 when t5_placement is cpu: T5 waits in CPU memory for the prompts the cache "
            "misses, so without a cache every request would run it there (seconds each), the default "
            "prompt's too",
        )
    if config.min_working_pixels > config.max_working_pixels:
        raise ConfigError(
            "min_working_pixels",
            f"{config.min_working_pixels} exceeds max_working_pixels {config.max_working_pixels}",
        )


def flatten_triton_parameters(model_config: Mapping[str, object]) -> dict[str, str]:
    """Turn Triton's `{"name": {"string_value": "..."}}` parameters into plain strings."""
    raw = cast(Mapping[str, Mapping[str, str]], model_config.get("parameters", {}))
    return {name: entry.get("string_value", "") for name, entry in raw.items()}
