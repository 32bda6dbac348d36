"""The benchmarks' pure helpers: what they compute must be right, or their tables mislead."""

import numpy as np
import pytest
import torch

from bench.common import interleaved, markdown_table
from bench.crop_to_mask import tokens
from bench.gpu_transformer import Variant, unavailable
from bench.intake import draft_reduction
from bench.photo import blob_mask
from fluxfill.inpaint.geometry import Box


def test_interleaved_times_every_variant_each_round_in_rotating_order() -> None:
    calls: list[str] = []
    times = interleaved({name: (lambda n=name: calls.append(n)) for name in "abc"}, rounds=3, warmup=1)
    assert {name: len(samples) for name, samples in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert calls == list("abcabcbcacab")


def test_markdown_table_has_header_rule_and_rows() -> None:
    assert markdown_table(["a", "b"], [[1, "x"]]).splitlines() == ["| a | b |", "|---|---|", "| 1 | x |"]


@pytest.mark.parametrize("coverage", [0.02, 0.10, 0.30, 0.60])
def test_blob_mask_covers_the_asked_share_inside_the_frame(coverage: float) -> None:
    mask = blob_mask(coverage, 300, 400)
    assert mask.shape == (400, 300)
    assert np.mean(mask == 255) == pytest.approx(coverage, rel=0.03)
    # Not touching the border, so crop margins are what the engine decides, not the frame.
    border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    assert not border.any()


@pytest.mark.parametrize(
    ("box", "working", "expected"),
    [
        (Box(0, 0, 3000, 4000), (880, 1184), 2),  # a quarter of the size is still above the working size
        (Box(0, 0, 864, 1024), (864, 1024), 1),  # already at working size: decode everything
        (Box(0, 0, 3000, 4000), (256, 256), 8),  # never beyond libjpeg's 1/8
        (Box(0, 0, 1900, 2300), (944, 1104), 2),
    ],
)
def test_draft_reduction_never_decodes_below_the_working_size(
    box: Box, working: tuple[int, int], expected: int
) -> None:
    reduction = draft_reduction(box, *working)
    assert reduction == expected
    assert box.width // reduction >= working[0]
    assert box.height // reduction >= working[1]


def test_tokens_are_one_per_16x16_pixels() -> None:
    assert tokens(1024, 1024) == 4096
    assert tokens(3000, 4000) == 188 * 250


def test_variant_names_and_cpu_availability() -> None:
    cpu = torch.device("cpu")
    assert Variant().name == "bf16"
    assert Variant(precision="fp8", compile=True, fbcache=True).name == "fp8+fbcache+compile"
    assert unavailable(Variant(), cpu) is None
    assert unavailable(Variant(offload="block"), cpu) == "CPU offload needs a CUDA device"
    assert unavailable(Variant(precision="fp8"), cpu) is not None
