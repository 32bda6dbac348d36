"""Load FLUX.1-Fill with diffusers from local files and expose it as the engine's `Denoiser`."""

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

# Nothing may reach a model hub: set before diffusers/transformers read it on import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from diffusers import FluxFillPipeline, FluxTransformer2DModel, GGUFQuantizationConfig
from diffusers.utils import logging as diffusers_logging
from diffusers.utils.torch_utils import get_module_execution_device
from PIL import Image
from transformers.utils import logging as transformers_logging

from fluxfill.inpaint.config import ModelConfig
from fluxfill.inpaint.engine import PreviewCallback, StepCallback
from fluxfill.inpaint.errors import InvalidInputError
from fluxfill.inpaint.geometry import BoolArray, UInt8Array
from fluxfill.inpaint.offload import OffloadDecision, choose_offload
from fluxfill.inpaint.preview import decode_preview
from fluxfill.inpaint.prompt_cache import PromptCache
from fluxfill.inpaint.speedups import apply_speedups, reset_step_cache
from fluxfill.inpaint.weights import check_weights

logger = logging.getLogger(__name__)

# The real FLUX.1-Fill transformer has ~12e9 parameters; anything this small is a test model.
TEST_MODEL_PARAMETERS = 100_000_000
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class LoadReport:
    """What was loaded, for logs and metrics."""

    device: str
    dtype: str
    offload: OffloadDecision
    transformer_parameters: int
    is_test_model: bool
    speedups: tuple[str, ...] = ()


class DiffusersDenoiser:
    """A `FluxFillPipeline` behind the engine's `Denoiser` port."""

    def __init__(self, pipeline: Any, config: ModelConfig) -> None:
        self._pipeline = pipeline
        self._max_sequence_length = config.max_sequence_length
        self._preview_every = config.preview_every
        self._preview_max_side = config.preview_max_side
        self.prompt_cache: PromptCache[tuple[torch.Tensor, torch.Tensor]] = PromptCache(
            config.prompt_cache_size, self._encode_prompt
        )

    def _encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        pipeline = self._pipeline
        _refuse_beyond_t5(pipeline, prompt, self._max_sequence_length)
        device = pipeline._execution_device
        with torch.inference_mode():
            pooled_embeds = _clip_pooled(pipeline, prompt, device)
            # T5 may be parked in CPU memory (t5_placement=cpu): encode where it lives, then move the result.
            t5_device = next(pipeline.text_encoder_2.parameters()).device
            prompt_embeds = pipeline._get_t5_prompt_embeds(
                prompt=prompt, max_sequence_length=self._max_sequence_length, device=t5_device
            )
        return prompt_embeds.to(device), pooled_embeds

    def park_t5(self) -> None:
        """Move T5 (9.5 GB in bf16) to CPU memory: prompt-cache hits never need it, misses run slower."""
        self._pipeline.text_encoder_2.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def denoise(
        self,
        image: UInt8Array,
        mask: BoolArray,
        *,
        prompt: str,
        steps: int,
        guidance: float,
        seed: int,
        on_step: StepCallback | None,
        on_preview: PreviewCallback | None = None,
    ) -> UInt8Array:
        """Run the pipeline once at the image's size (a multiple of 16)."""
        height, width = mask.shape

        def after_step(
            _pipe: Any, step_index: int, _timestep: Any, tensors: dict[str, Any]
        ) -> dict[str, Any]:
            step = step_index + 1
            if (
                on_preview is not None
                and self._preview_every
                and step % self._preview_every == 0
                and step < steps
            ):
                latents = tensors["latents"]
                on_preview(decode_preview(self._pipeline, latents, height, width, self._preview_max_side))
            if on_step is not None:
                on_step(step_index + 1, steps)
            return {}

        prompt_embeds, pooled_embeds = self.prompt_cache.get(prompt)
        reset_step_cache(self._pipeline.transformer)
        # A CPU generator makes a seed mean the same noise on every device.
        generator = torch.Generator(device="cpu").manual_seed(seed)
        with torch.inference_mode():
            output = self._pipeline(
                prompt_embeds=prompt_embeds,
                pooled_prompt_embeds=pooled_embeds,
                image=Image.fromarray(image),
                mask_image=Image.fromarray(mask.astype(np.uint8) * 255),
                height=height,
                width=width,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=generator,
                max_sequence_length=self._max_sequence_length,
                output_type="np",
                callback_on_step_end=after_step,
            )
        pixels = np.clip(np.asarray(output.images[0], dtype=np.float32), 0.0, 1.0) * 255.0
        generated: UInt8Array = np.rint(pixels).astype(np.uint8)
        return generated


def _refuse_beyond_t5(pipeline: Any, prompt: str, max_sequence_length: int) -> None:
    """A prompt longer than T5 reads is refused: diffusers would cut it at `max_sequence_length` tokens and
    run the job on its beginning alone, with nothing to tell the user which of their words were left out
    (the bridge takes prompts of up to 4,096 bytes, which English fills with far more than 512 tokens)."""
    tokens = len(pipeline.tokenizer_2(prompt, verbose=False).input_ids)  # its end token included
    if tokens > max_sequence_length:
        raise InvalidInputError(
            "PROMPT",
            f"is {tokens} tokens long; the model reads at most {max_sequence_length} "
            "(max_sequence_length of its T5 text encoder): shorten it",
        )


def _clip_pooled(pipeline: Any, prompt: str, device: torch.device) -> torch.Tensor:
    """CLIP's pooled embedding of the prompt's first 77 tokens, as diffusers' `_get_clip_prompt_embeds`
    makes it, less that method's warning. FLUX reads the whole prompt through T5 and only its beginning
    through CLIP, by design; diffusers tokenized every prompt a second time, untruncated, to log the rest of a
    longer one: the user's own words, on the stub's stderr, at every prompt of more than 77 tokens (an ERROR
    entry in the Triton image's log, naming no job)."""
    ids = pipeline.tokenizer(
        prompt,
        padding="max_length",
        max_length=pipeline.tokenizer_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    encoder = pipeline.text_encoder
    output = encoder(ids.to(get_module_execution_device(encoder)), output_hidden_states=False)
    pooled: torch.Tensor = output.pooler_output.to(dtype=encoder.dtype, device=device)
    return pooled


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """`auto` means bfloat16 on a GPU and float32 on the CPU (where bfloat16 is slow)."""
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return _DTYPES[name]


@contextmanager
def no_progress_bars() -> Iterator[None]:
    """diffusers' and transformers' progress bars off for a while, each put back as it was. They draw on
    stderr with carriage returns ("Loading pipeline components...", "Loading weights"): in the Triton image's
    JSON log an ERROR entry each, at every model load, beside the errors an operator looks for."""
    modules = [
        module for module in (diffusers_logging, transformers_logging) if module.is_progress_bar_enabled()
    ]
    for module in modules:
        module.disable_progress_bar()
    try:
        yield
    finally:
        for module in modules:
            module.enable_progress_bar()


def load_pipeline(config: ModelConfig, device: str) -> tuple[DiffusersDenoiser, LoadReport]:
    """Load and place the pipeline; raise `WeightsError` for missing or corrupt weights."""
    check_weights(config)
    dtype = resolve_dtype(config.dtype, device)
    components: dict[str, Any] = {}
    with no_progress_bars():
        if config.gguf_file is not None:
            components["transformer"] = FluxTransformer2DModel.from_single_file(
                str(config.gguf_file),
                quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),  # type: ignore[no-untyped-call]
                config=str(config.weights_dir),
                subfolder="transformer",
                dtype=dtype,
                local_files_only=True,
            )
        pipeline = FluxFillPipeline.from_pretrained(  # type: ignore[no-untyped-call]
            str(config.weights_dir), dtype=dtype, local_files_only=True, **components
        )
    pipeline.set_progress_bar_config(disable=True)
    decision = _place(pipeline, config, device)
    parameters = sum(p.numel() for p in pipeline.transformer.parameters())
    speedups = tuple(apply_speedups(pipeline, config, device))
    report = LoadReport(
        device,
        str(dtype).removeprefix("torch."),
        decision,
        parameters,
        parameters < TEST_MODEL_PARAMETERS,
        speedups,
    )
    return DiffusersDenoiser(pipeline, config), report


def peak_gpu_bytes(device: str) -> int | None:
    """Peak memory allocated on a CUDA device since start, or None on the CPU."""
    if not device.startswith("cuda"):
        return None
    return int(torch.cuda.max_memory_allocated(torch.device(device)))


def _module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def _place(pipeline: Any, config: ModelConfig, device: str) -> OffloadDecision:
    modules = [m for m in pipeline.components.values() if isinstance(m, torch.nn.Module)]
    sizes = [_module_bytes(m) for m in modules]
    free = torch.cuda.mem_get_info(torch.device(device))[0] if device.startswith("cuda") else None
    decision = choose_offload(config.offload, sum(sizes), max(sizes, default=0), free)
    if decision.mode == "model":
        pipeline.enable_model_cpu_offload(device=device)
    elif decision.mode == "sequential":
        pipeline.enable_sequential_cpu_offload(device=device)
    else:
        pipeline.to(device)
    return decision
