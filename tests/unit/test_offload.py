"""`auto` offload picks the lightest placement that fits in free GPU memory."""

import pytest

from fluxfill.inpaint.offload import choose_offload

GIB = 1024**3


@pytest.mark.parametrize(
    ("total", "largest", "free", "mode"),
    [
        (33 * GIB, 24 * GIB, 80 * GIB, "none"),  # H100: everything fits
        (33 * GIB, 24 * GIB, 40 * GIB, "model"),  # A100-40G: one component at a time
        (33 * GIB, 24 * GIB, 22 * GIB, "sequential"),  # L4 with bf16 weights: layer by layer
        (20 * GIB, 12 * GIB, 25 * GIB, "none"),  # exactly the headroom
    ],
)
def test_auto_chooses_lightest_offload_that_fits(total: int, largest: int, free: int, mode: str) -> None:
    decision = choose_offload("auto", total, largest, free)
    assert decision.mode == mode
    assert "GiB free" in decision.reason


def test_explicit_policy_is_kept_on_a_gpu() -> None:
    assert choose_offload("sequential", GIB, GIB, 80 * GIB).mode == "sequential"


@pytest.mark.parametrize("policy", ["auto", "model", "sequential", "none"])
def test_without_a_gpu_nothing_is_offloaded(policy: str) -> None:
    decision = choose_offload(policy, 33 * GIB, 24 * GIB, None)  # type: ignore[arg-type]
    assert decision.mode == "none"
    assert "no GPU" in decision.reason
