"""GPU fast-path switches on the transformer: FP8 linears, first-block cache, torch.compile.

Each is a config.pbtxt parameter, off by default; `load_pipeline` applies them after placing the weights.
"""

import logging
from typing import Any

import torch

from fluxfill.inpaint.config import ConfigError, ModelConfig

logger = logging.getLogger(__name__)

# FP8 matmuls need Ada (8.9, e.g. L4) or Hopper (9.0, e.g. H100) tensor cores.
FP8_MIN_CAPABILITY = (8, 9)
_CACHE_CONTEXT = "fill"


def check_fp8_support(device: str, capability: tuple[int, int] | None) -> None:
    """Refuse fp8 where it cannot run, naming the parameter; `capability` is None on the CPU."""
    if capability is None:
        raise ConfigError("transformer_quantization", f"fp8 needs a CUDA GPU, this instance runs on {device}")
    if capability < FP8_MIN_CAPABILITY:
        found = ".".join(map(str, capability))
        raise ConfigError(
            "transformer_quantization",
            f"fp8 needs compute capability 8.9 or newer (L4, H100), {device} has {found}",
        )


def quantize_fp8(transformer: torch.nn.Module) -> None:
    """Float8 dynamic activation + weight quantization of every linear layer (torchao)."""
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_
    except ImportError as error:
        raise ConfigError("transformer_quantization", f"fp8 needs torchao ({error})") from None
    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig())


def enable_first_block_cache(transformer: Any, threshold: float) -> None:
    """Skip the remaining blocks while the first block's residual barely changes between steps."""
    from diffusers import FirstBlockCacheConfig

    transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))  # type: ignore[no-untyped-call]
    # FluxFillPipeline (diffusers 0.42) calls the transformer outside a cache context, which the cache
    # hooks require: give every call one.
    plain_forward = transformer.forward

    def forward_in_cache_context(*args: Any, **kwargs: Any) -> Any:
        with transformer.cache_context(_CACHE_CONTEXT):
            return plain_forward(*args, **kwargs)

    transformer.forward = forward_in_cache_context


def reset_step_cache(transformer: Any) -> None:
    """Forget the previous run's cached residuals, so requests never share them."""
    if getattr(transformer, "is_cache_enabled", False):
        transformer._reset_stateful_cache()


def compile_transformer(transformer: Any, mode: str, backend: str) -> None:
    """Regional compilation compiles one block per kind and reuses it; full compiles the whole forward."""
    if mode == "regional":
        transformer.compile_repeated_blocks(fullgraph=True, backend=backend)
    elif mode == "full":
        transformer.compile(backend=backend)


def apply_speedups(pipeline: Any, config: ModelConfig, device: str) -> list[str]:
    """Apply the configured switches; returns what was applied, for the load log."""
    applied = []
    transformer = pipeline.transformer
    if config.transformer_quantization == "fp8":
        cuda = device.startswith("cuda")
        check_fp8_support(device, torch.cuda.get_device_capability(torch.device(device)) if cuda else None)
        quantize_fp8(transformer)
        applied.append("fp8 transformer linears")
    if config.first_block_cache_threshold > 0:
        enable_first_block_cache(transformer, config.first_block_cache_threshold)
        applied.append(f"first-block cache (threshold {config.first_block_cache_threshold:g})")
    if config.compile != "off":
        compile_transformer(transformer, config.compile, config.compile_backend)
        applied.append(f"torch.compile {config.compile} ({config.compile_backend})")
    return applied
