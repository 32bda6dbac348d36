"""The inpainting engine: crop to the mask, denoise once at working size, composite back.

The denoiser is a port: `DiffusersDenoiser` in production, a small fake in unit tests.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fluxfill.inpaint.config import ModelConfig
from fluxfill.inpaint.geometry import (
    BoolArray,
    Box,
    UInt8Array,
    composite,
    feather_alpha,
    resize_mask,
    resize_rgb,
)
from fluxfill.inpaint.request import InpaintRequest

# Called with (0, total) just before denoising and (k, total) after step k; raising stops the run.
StepCallback = Callable[[int, int], None]
# Receives a low-resolution preview just before the step callback of the step it shows.
PreviewCallback = Callable[[UInt8Array], None]


class Denoiser(Protocol):
    """Inpaints `image` where `mask` is True; returns an RGB array of the same size."""

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
    ) -> UInt8Array: ...


@dataclass(frozen=True)
class PhaseTimes:
    """Seconds spent in each phase of one request."""

    preprocess: float = 0.0
    denoise: float = 0.0
    postprocess: float = 0.0


@dataclass(frozen=True)
class InpaintResult:
    """The output image (same size as the input), the seed used and what was denoised."""

    image: UInt8Array
    seed: int
    denoised_box: Box | None
    working_size: tuple[int, int] | None
    times: PhaseTimes

    @property
    def denoised_share(self) -> float:
        """Share of the input's pixels inside the denoised region (0 when nothing ran)."""
        if self.denoised_box is None:
            return 0.0
        height, width = self.image.shape[:2]
        return self.denoised_box.area / (height * width)


class InpaintEngine:
    """Runs requests through a denoiser with the configured geometry."""

    def __init__(self, denoiser: Denoiser, config: ModelConfig) -> None:
        self._denoiser = denoiser
        self._config = config

    def inpaint(
        self,
        request: InpaintRequest,
        on_step: StepCallback | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> InpaintResult:
        """Inpaint one request; pixels beyond the feathered mask stay bit-identical."""
        config = self._config
        started = time.perf_counter()
        plan = config.crop_geometry.plan(request.mask)
        if plan is None:
            # Nothing to repaint: the input is the answer, and the model never runs.
            return InpaintResult(request.image, request.seed, None, None, PhaseTimes())
        rows, cols = plan.box.slices()
        original_crop = request.image[rows, cols]
        alpha = feather_alpha(request.mask[rows, cols], config.feather_pixels)
        working_image = resize_rgb(original_crop, plan.working_width, plan.working_height)
        working_mask = resize_mask(alpha > 0, plan.working_width, plan.working_height)
        prepared = time.perf_counter()
        if on_step is not None:
            on_step(0, request.steps)
        generated = self._denoiser.denoise(
            working_image,
            working_mask,
            prompt=request.prompt,
            steps=request.steps,
            guidance=request.guidance,
            seed=request.seed,
            on_step=on_step,
            on_preview=on_preview,
        )
        denoised = time.perf_counter()

        restored = resize_rgb(generated, plan.box.width, plan.box.height)
        output = request.image.copy()
        output[rows, cols] = composite(original_crop, restored, alpha)
        finished = time.perf_counter()
        times = PhaseTimes(prepared - started, denoised - prepared, finished - denoised)
        return InpaintResult(output, request.seed, plan.box, (plan.working_width, plan.working_height), times)
