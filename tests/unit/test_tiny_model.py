"""The tiny FLUX Fill model builds reproducibly, caches by recipe version and runs offline."""

import hashlib
import json
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import FluxFillPipeline, FluxTransformer2DModel, GGUFQuantizationConfig
from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter
from gguf import GGMLQuantizationType
from PIL import Image
from transformers.utils import logging as transformers_logging

from fluxfill.inpaint.config import ConfigError
from fluxfill.inpaint.errors import InvalidInputError
from fluxfill.inpaint.pipeline import DiffusersDenoiser, _clip_pooled, load_pipeline
from fluxfill.inpaint.service import FluxFillService
from fluxfill.inpaint.tiny import (
    TINY_MAX_SEQUENCE_LENGTH,
    TINY_RECIPE_VERSION,
    TinyModel,
    build_tiny_model,
    ensure_tiny_model,
)
from tests.support import make_config, repository_parameters

MARKER = "tiny-model.json"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return ensure_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    # "Offline" means no connection is even attempted, not merely that none succeeded.
    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("the tiny model tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def pipe(tiny: TinyModel) -> Any:
    pipeline = FluxFillPipeline.from_pretrained(tiny.pipeline_dir, local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def gguf_transformer(tiny: TinyModel) -> Any:
    return FluxTransformer2DModel.from_single_file(
        tiny.gguf_file,
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
        config=str(tiny.pipeline_dir),
        subfolder="transformer",
        local_files_only=True,
    )


def digests(root: Path) -> dict[str, str]:
    model = TinyModel(pipeline_dir=root / "pipeline", gguf_file=root / "transformer-q8_0.gguf")
    files = [*model.pipeline_dir.rglob("*"), model.gguf_file, root / MARKER]
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in files
        if path.is_file()
    }


def inpaint(pipeline: Any, *, height: int, width: int, seed: int) -> np.ndarray[Any, Any]:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[height // 4 : height // 2, width // 4 : width // 2] = 255
    result: np.ndarray[Any, Any] = pipeline(
        prompt="a red chair",
        image=Image.fromarray(pixels),
        mask_image=Image.fromarray(mask),
        height=height,
        width=width,
        num_inference_steps=4,
        guidance_scale=30.0,
        generator=torch.Generator().manual_seed(seed),
        max_sequence_length=TINY_MAX_SEQUENCE_LENGTH,
        output_type="np",
    ).images
    return result


def test_two_builds_are_bitwise_identical(tiny: TinyModel, tmp_path: Path) -> None:
    # Whatever the caller's global seed, the recipe seeds every component itself.
    torch.manual_seed(999)
    build_tiny_model(tmp_path)

    first, second = digests(tiny.pipeline_dir.parent), digests(tmp_path)
    assert "transformer-q8_0.gguf" in first
    assert "pipeline/transformer/diffusion_pytorch_model.safetensors" in first
    assert first == second


def test_build_leaves_the_callers_torch_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    build_tiny_model(tmp_path)

    assert torch.equal(torch.rand(4), expected)


def test_marker_records_version_and_gguf_digest(tiny: TinyModel) -> None:
    marker = json.loads((tiny.pipeline_dir.parent / MARKER).read_text())

    assert marker["recipe_version"] == TINY_RECIPE_VERSION
    assert marker["gguf_sha256"] == hashlib.sha256(tiny.gguf_file.read_bytes()).hexdigest()


def test_ensure_reuses_a_build_with_a_matching_marker(tmp_path: Path) -> None:
    built = ensure_tiny_model(tmp_path)
    before = {path: path.stat().st_mtime_ns for path in (built.gguf_file, *built.pipeline_dir.rglob("*"))}

    again = ensure_tiny_model(tmp_path)

    assert again == built
    assert {path: path.stat().st_mtime_ns for path in before} == before


def test_ensure_rebuilds_when_the_marker_version_differs(tmp_path: Path) -> None:
    built = ensure_tiny_model(tmp_path)
    marker = tmp_path / MARKER
    stale = json.loads(marker.read_text()) | {"recipe_version": TINY_RECIPE_VERSION - 1}
    marker.write_text(json.dumps(stale))
    old_inode = built.gguf_file.stat().st_ino

    ensure_tiny_model(tmp_path)

    assert built.gguf_file.stat().st_ino != old_inode
    assert json.loads(marker.read_text())["recipe_version"] == TINY_RECIPE_VERSION


def test_ensure_rebuilds_a_damaged_gguf_file(tmp_path: Path) -> None:
    built = ensure_tiny_model(tmp_path)
    good = built.gguf_file.read_bytes()
    built.gguf_file.write_bytes(good[: len(good) // 2])

    ensure_tiny_model(tmp_path)

    assert built.gguf_file.read_bytes() == good


@pytest.mark.usefixtures("no_network")
@pytest.mark.parametrize(("height", "width"), [(48, 64), (64, 48)])
def test_pipeline_loads_offline_and_inpaints_the_requested_size(
    tiny: TinyModel, height: int, width: int
) -> None:
    pipeline = FluxFillPipeline.from_pretrained(tiny.pipeline_dir, local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)

    image = inpaint(pipeline, height=height, width=width, seed=1)

    assert image.shape == (1, height, width, 3)
    assert np.isfinite(image).all()


def test_same_seed_gives_bitwise_identical_images(pipe: Any) -> None:
    first = inpaint(pipe, height=48, width=64, seed=7)
    second = inpaint(pipe, height=48, width=64, seed=7)
    other_seed = inpaint(pipe, height=48, width=64, seed=8)

    assert np.array_equal(first, second)
    assert not np.array_equal(first, other_seed)


@pytest.mark.usefixtures("no_network")
def test_gguf_file_loads_with_q8_0_linear_weights(gguf_transformer: Any, pipe: Any) -> None:
    linears = [module for module in gguf_transformer.modules() if isinstance(module, torch.nn.Linear)]

    assert linears
    assert all(isinstance(module, GGUFLinear) for module in linears)
    assert all(isinstance(module.weight, GGUFParameter) for module in linears)
    assert {module.weight.quant_type for module in linears} == {GGMLQuantizationType.Q8_0}
    assert gguf_transformer.config.in_channels == pipe.transformer.config.in_channels


def test_gguf_pipeline_inpaints_close_to_the_full_precision_one(
    tiny: TinyModel, gguf_transformer: Any, pipe: Any
) -> None:
    quantized = FluxFillPipeline.from_pretrained(
        tiny.pipeline_dir, transformer=gguf_transformer, local_files_only=True
    )
    quantized.set_progress_bar_config(disable=True)

    image = inpaint(quantized, height=48, width=64, seed=3)

    assert image.shape == (1, 48, 64, 3)
    assert np.isfinite(image).all()
    # Q8_0 of the same weights: only rounding separates the two images.
    assert np.abs(image - inpaint(pipe, height=48, width=64, seed=3)).max() < 0.05


@pytest.mark.parametrize("with_gguf", [False, True], ids=["diffusers", "gguf"])
def test_loading_the_pipeline_draws_no_progress_bar(
    tiny: TinyModel, with_gguf: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """diffusers and transformers drew their loading bars on the stub's stderr ("Loading pipeline
    components...", "Loading weights", with carriage returns): an ERROR entry each in the Triton image's JSON
    log at every model load, beside the real errors an operator looks for."""
    gguf = str(tiny.gguf_file) if with_gguf else ""
    config = make_config(weights_dir=str(tiny.pipeline_dir), gguf_file=gguf, warmup_steps="0")

    load_pipeline(config, "cpu")

    captured = capsys.readouterr()
    assert (captured.err, captured.out) == ("", "")
    assert transformers_logging.is_progress_bar_enabled(), "the process's own setting is left as it was"


# "a" is one token of the tiny T5 vocabulary: n words are n tokens and the end token.
def words(count: int) -> str:
    return " ".join(["a"] * count)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def library_logs() -> Iterator[list[str]]:
    """What diffusers and transformers log meanwhile (their loggers write to stderr, not to the root's)."""
    records = Records()
    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers")]
    for logger in loggers:
        logger.addHandler(records)
    try:
        yield records.messages
    finally:
        for logger in loggers:
            logger.removeHandler(records)


@pytest.mark.parametrize("prompt", ["a cat", words(200)], ids=["short", "beyond CLIP's 77 tokens"])
def test_the_clip_embedding_is_diffusers_own_without_the_users_words_in_a_log(
    pipe: Any, prompt: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """diffusers logged the words of a prompt beyond CLIP's 77 tokens at every such prompt (and transformers
    that the sequence was too long): on the stub's stderr, an ERROR entry in the Triton image's log."""
    with torch.inference_mode(), library_logs() as logged:
        ours = _clip_pooled(pipe, prompt, torch.device("cpu"))
        said = capfd.readouterr()
    theirs = pipe._get_clip_prompt_embeds(prompt=prompt, device=torch.device("cpu"))

    assert torch.equal(ours, theirs)
    assert logged == []
    assert (said.err, said.out) == ("", "")


@pytest.mark.parametrize("limit", [64, 512])
def test_a_prompt_longer_than_t5_reads_is_refused_with_its_length(pipe: Any, limit: int) -> None:
    """diffusers cut such a prompt at max_sequence_length tokens and ran the job on its beginning alone."""
    denoiser = DiffusersDenoiser(pipe, make_config(max_sequence_length=str(limit)))
    image, mask = np.zeros((32, 32, 3), np.uint8), np.ones((32, 32), bool)

    def denoise(prompt: str) -> None:
        denoiser.denoise(image, mask, prompt=prompt, steps=1, guidance=30.0, seed=1, on_step=None)

    denoise(words(limit - 1))  # every token read, the end token the last
    with pytest.raises(InvalidInputError) as refused:
        denoise(words(limit))

    assert str(refused.value) == (
        f"PROMPT: is {limit + 1} tokens long; the model reads at most {limit} "
        "(max_sequence_length of its T5 text encoder): shorten it"
    )


def test_a_default_prompt_longer_than_t5_reads_fails_the_load_naming_the_parameter(tiny: TinyModel) -> None:
    """Else every request with an empty PROMPT would be refused, each naming a PROMPT it never sent."""
    parameters = {
        **repository_parameters(),
        "weights_dir": str(tiny.pipeline_dir),
        "max_sequence_length": "16",
        "default_prompt": words(16),
    }

    with pytest.raises(ConfigError) as refused:
        FluxFillService.load(parameters, "cpu")

    assert str(refused.value) == (
        "parameter 'default_prompt': is 17 tokens long; the model reads at most 16 "
        "(max_sequence_length of its T5 text encoder): shorten it"
    )
