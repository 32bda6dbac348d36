"""Decide how much of the pipeline lives on the GPU."""

from dataclasses import dataclass

from fluxfill.inpaint.config import OffloadPolicy

# Activations, the VAE decode and the allocator need room beyond the weights themselves.
HEADROOM = 1.25
_GIB = 1024**3


@dataclass(frozen=True)
class OffloadDecision:
    """The offload mode applied and why."""

    mode: OffloadPolicy
    reason: str


def choose_offload(
    policy: OffloadPolicy, total_bytes: int, largest_component_bytes: int, free_gpu_bytes: int | None
) -> OffloadDecision:
    """Resolve the configured policy; `auto` picks the lightest mode that fits in free GPU memory."""
    if free_gpu_bytes is None:
        return OffloadDecision("none", "no GPU: everything runs on the CPU")
    if policy != "auto":
        return OffloadDecision(policy, f"configured offload={policy}")
    free = f"{free_gpu_bytes / _GIB:.1f} GiB free"
    if total_bytes * HEADROOM <= free_gpu_bytes:
        return OffloadDecision("none", f"all weights ({total_bytes / _GIB:.1f} GiB) fit, {free}")
    if largest_component_bytes * HEADROOM <= free_gpu_bytes:
        return OffloadDecision(
            "model",
            f"all weights ({total_bytes / _GIB:.1f} GiB) do not fit but the largest component "
            f"({largest_component_bytes / _GIB:.1f} GiB) does, {free}",
        )
    return OffloadDecision(
        "sequential",
        f"even the largest component ({largest_component_bytes / _GIB:.1f} GiB) does not fit, {free}",
    )
