"""Hand-written fakes of the core's ports."""

from dataclasses import dataclass, field

from fluxfill.inpaint.engine import PreviewCallback, StepCallback
from fluxfill.inpaint.geometry import BoolArray, UInt8Array


@dataclass
class PaintingDenoiser:
    """Paints the masked working pixels one colour and reports every step, like a real run."""

    colour: tuple[int, int, int] = (250, 10, 120)
    calls: list[dict[str, object]] = field(default_factory=list)

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
        self.calls.append(
            {"shape": image.shape, "mask_shape": mask.shape, "prompt": prompt, "steps": steps, "seed": seed}
        )
        for step in range(1, steps + 1):
            if on_step is not None:
                on_step(step, steps)
        painted = image.copy()
        painted[mask] = self.colour
        # A real model also changes unmasked pixels slightly (VAE round trip): the engine must discard that.
        painted[~mask] = 255 - image[~mask]
        return painted
