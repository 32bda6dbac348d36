"""GPU fast-path switches: each is applied (or refused with a reason) and outputs stay valid images."""

import re
from pathlib import Path

import numpy as np
import pytest

from fluxfill.inpaint.config import ConfigError
from fluxfill.inpaint.geometry import Box, choose_bucket, fit_box_to_aspect, parse_buckets, plan_crop
from fluxfill.inpaint.speedups import check_fp8_support
from tests.support import make_config

BUCKETS = parse_buckets("1024x1024,1152x896,896x1152,1344x768,768x1344,512x512,640x384,384x640")


@pytest.mark.parametrize(
    ("width", "height", "target", "expected"),
    [
        (1000, 1000, 1 << 20, (1024, 1024)),
        (4000, 3000, 1 << 20, (1152, 896)),
        (3000, 4000, 1 << 20, (896, 1152)),
        (1920, 1080, 1 << 20, (1344, 768)),
        (300, 300, 262_144, (512, 512)),  # a small crop takes the small square, not the 1 MP one
        (500, 300, 262_144, (640, 384)),
        (100, 2000, 1 << 20, (768, 1344)),  # beyond every aspect: the nearest one
    ],
)
def test_bucket_is_nearest_in_aspect_then_area(
    width: int, height: int, target: int, expected: tuple[int, int]
) -> None:
    assert choose_bucket(width, height, target, BUCKETS) == expected


@pytest.mark.parametrize("text", ["1024", "1024x", "1000x1024", "0x16", "axb"])
def test_bad_bucket_lists_are_refused_naming_the_parameter(text: str) -> None:
    with pytest.raises(ConfigError, match="parameter 'resolution_buckets'"):
        make_config(resolution_buckets=text)


def test_crop_grows_towards_the_bucket_aspect_inside_the_image() -> None:
    grown = fit_box_to_aspect(Box(100, 100, 200, 300), 1.0, 1000, 1000)
    assert (grown.width, grown.height) == (200, 200)
    assert grown.left == 50
    clamped = fit_box_to_aspect(Box(0, 0, 100, 300), 2.0, 150, 300)
    assert (clamped.left, clamped.right) == (0, 150)


def test_plan_with_buckets_uses_a_bucket_and_nearly_uniform_scale() -> None:
    mask = np.zeros((3000, 4000), bool)
    mask[1000:1300, 1500:1700] = True
    plan = plan_crop(
        mask,
        crop_to_mask=True,
        margin_fraction=0.3,
        feather=8,
        min_pixels=262_144,
        max_pixels=1 << 20,
        buckets=BUCKETS,
    )
    assert plan is not None
    assert (plan.working_width, plan.working_height) in BUCKETS
    scale_x = plan.working_width / plan.box.width
    scale_y = plan.working_height / plan.box.height
    assert abs(scale_x / scale_y - 1) < 0.02


@pytest.mark.parametrize(
    ("device", "capability", "problem"),
    [
        ("cpu", None, "needs a CUDA GPU"),
        ("cuda:0", (8, 6), "needs compute capability 8.9 or newer (L4, H100), cuda:0 has 8.6"),
    ],
)
def test_fp8_is_refused_where_it_cannot_run(
    device: str, capability: tuple[int, int] | None, problem: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"parameter 'transformer_quantization': fp8 {problem}")):
        check_fp8_support(device, capability)


@pytest.mark.parametrize("capability", [(8, 9), (9, 0)])
def test_fp8_is_allowed_on_ada_and_hopper(capability: tuple[int, int]) -> None:
    check_fp8_support("cuda:0", capability)


def test_compile_without_warm_up_is_refused() -> None:
    with pytest.raises(ConfigError, match="parameter 'warmup_steps': must be at least 1 when compile is on"):
        make_config(compile="regional", warmup_steps="0")


def test_t5_on_the_cpu_without_a_prompt_cache_is_refused() -> None:
    """Every request would have run T5 on the CPU: the load said nothing, and it was the slowest setting."""
    with pytest.raises(
        ConfigError, match="parameter 'prompt_cache_size': must be at least 1 when t5_placement"
    ):
        make_config(t5_placement="cpu", prompt_cache_size="0")
    make_config(t5_placement="device", prompt_cache_size="0")


@pytest.fixture(scope="module")
def tiny_pipeline_dir() -> Path:
    from fluxfill.inpaint.tiny import ensure_tiny_model
    from tests.support import REPO_ROOT

    return ensure_tiny_model(REPO_ROOT / "build" / "tiny-flux-fill").pipeline_dir


def small_config(pipeline_dir: Path, **overrides: str) -> dict[str, str]:
    from tests.support import repository_parameters

    return {
        **repository_parameters(),
        "weights_dir": str(pipeline_dir),
        "min_working_pixels": "4096",
        "max_working_pixels": "16384",
        "warmup_steps": "1",
        **overrides,
    }


def inpaint_once(service: object, seed: int = 3) -> np.ndarray:
    from fluxfill.inpaint.service import FluxFillService

    assert isinstance(service, FluxFillService)
    mask = np.zeros((96, 128), np.uint8)
    mask[20:70, 30:90] = 255
    inputs = {
        "IMAGE": np.full((96, 128, 3), 90, np.uint8),
        "MASK": mask,
        "PROMPT": np.array([b"a ball"], dtype=object),
        "STEPS": np.array([4], np.int32),
        "SEED": np.array([seed], np.int64),
    }
    return service.run(inputs).result.image


def test_first_block_cache_registers_hooks_and_keeps_images_valid(tiny_pipeline_dir: Path) -> None:
    from fluxfill.inpaint.service import FluxFillService

    plain = FluxFillService.load(small_config(tiny_pipeline_dir), "cpu")
    cached = FluxFillService.load(small_config(tiny_pipeline_dir, first_block_cache_threshold="0.5"), "cpu")
    transformer = cached.engine._denoiser._pipeline.transformer  # type: ignore[attr-defined]
    assert transformer.is_cache_enabled
    assert cached.report.speedups == ("first-block cache (threshold 0.5)",)
    first, again = inpaint_once(cached), inpaint_once(cached)
    assert first.shape == (96, 128, 3)
    assert np.array_equal(first, again), "a request must not reuse the previous request's cached residuals"
    assert np.abs(first.astype(int) - inpaint_once(plain).astype(int)).mean() < 8


def test_regional_compile_with_buckets_warms_every_bucket(tiny_pipeline_dir: Path) -> None:
    from fluxfill.inpaint.service import FluxFillService

    parameters = small_config(
        tiny_pipeline_dir, compile="regional", compile_backend="eager", resolution_buckets="128x128,160x96"
    )
    service = FluxFillService.load(parameters, "cpu")
    transformer = service.engine._denoiser._pipeline.transformer  # type: ignore[attr-defined]
    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    assert all(block._compiled_call_impl is not None for block in blocks)
    assert service.warm_up_sizes() == [(128, 128), (160, 96)]
    assert inpaint_once(service).shape == (96, 128, 3)


def test_t5_parked_after_warm_up_gives_identical_images(tiny_pipeline_dir: Path) -> None:
    from fluxfill.inpaint.service import FluxFillService

    resident = FluxFillService.load(small_config(tiny_pipeline_dir), "cpu")
    parked = FluxFillService.load(small_config(tiny_pipeline_dir, t5_placement="cpu"), "cpu")
    t5 = parked.engine._denoiser._pipeline.text_encoder_2  # type: ignore[attr-defined]
    assert next(t5.parameters()).device.type == "cpu"
    # A new prompt is a cache miss: it runs T5 where it is parked and must match the resident run.
    assert np.array_equal(inpaint_once(parked), inpaint_once(resident))
    assert parked.cache_stats.misses == 2  # the warm-up's default prompt, then "a ball"
