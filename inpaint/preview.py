"""Low-resolution previews of a run in progress, decoded from the current latents."""

from typing import Any

import numpy as np
import torch
from PIL import Image

from fluxfill.inpaint.geometry import UInt8Array


def decode_preview(
    pipeline: Any, packed_latents: torch.Tensor, height: int, width: int, max_side: int
) -> UInt8Array:
    """Decode the still-noisy latents through the VAE and shrink the result to `max_side`."""
    latents = pipeline._unpack_latents(packed_latents, height, width, pipeline.vae_scale_factor)
    vae = pipeline.vae
    latents = latents / vae.config.scaling_factor + vae.config.shift_factor
    decoded = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
    pixels = pipeline.image_processor.postprocess(decoded, output_type="np")[0]
    image = Image.fromarray(np.rint(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8))
    image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)
