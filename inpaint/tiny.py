"""A tiny random-weight FLUX.1-Fill pipeline and GGUF transformer, built offline for tests and demos."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import gguf
import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxFillPipeline,
    FluxTransformer2DModel,
)
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from fluxfill.inpaint.pipeline import no_progress_bars

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

# Bump whenever anything below changes the files, so ensure_tiny_model rebuilds stale copies.
TINY_RECIPE_VERSION = 1
# T5 has relative position buckets, not learned positions, so the real model's 512 tokens work unchanged.
TINY_MAX_SEQUENCE_LENGTH = 512

PIPELINE_DIRNAME = "pipeline"
GGUF_FILENAME = "transformer-q8_0.gguf"
MARKER_FILENAME = "tiny-model.json"

_SEED = 0
_CLIP_MAX_LENGTH = 77  # the pipeline pads CLIP prompts to the tokenizer's model_max_length
# C=4 latent channels; four VAE blocks keep the real model's vae scale factor of 8.
_LATENT_CHANNELS = 4
_VAE_BLOCKS = (8, 16, 16, 16)
_VAE_SCALE_FACTOR = 2 ** (len(_VAE_BLOCKS) - 1)
# Width 32 (2 heads x 16) keeps every linear input a multiple of 32, the Q8_0 block size.
_HEADS = 2
_HEAD_DIM = 16
_AXES_DIMS_ROPE = (4, 6, 6)  # must sum to the head dim
_TEXT_DIM = 32  # CLIP hidden = pooled_projection_dim; T5 d_model = joint_attention_dim
_T5_CORPUS = (
    "a photo of a cat sitting on a red sofa",
    "fill the masked area with a wooden table and a blue vase",
    "an empty street at night, wet asphalt, neon signs",
    "replace the sky with clouds at sunset over the mountains",
)


@dataclass(frozen=True)
class TinyModel:
    """Where a built tiny model lives."""

    pipeline_dir: Path
    gguf_file: Path


def build_tiny_model(output_dir: Path) -> TinyModel:
    """Build the tiny pipeline and GGUF transformer into output_dir, replacing any previous build.

    Args:
        output_dir: folder that receives `pipeline/`, the GGUF file and the `tiny-model.json` marker.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    with _locked(output_dir):
        return _build_locked(output_dir)


def ensure_tiny_model(output_dir: Path) -> TinyModel:
    """Return the tiny model in output_dir, building it only when missing, stale or damaged.

    Args:
        output_dir: folder that holds (or will hold) the tiny model.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    with _locked(output_dir):
        model = _existing(output_dir)
        if model is not None:
            return model
        return _build_locked(output_dir)


def _paths(output_dir: Path) -> TinyModel:
    return TinyModel(pipeline_dir=output_dir / PIPELINE_DIRNAME, gguf_file=output_dir / GGUF_FILENAME)


def _existing(output_dir: Path) -> TinyModel | None:
    model = _paths(output_dir)
    try:
        marker = json.loads((output_dir / MARKER_FILENAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("recipe_version") != TINY_RECIPE_VERSION:
        return None
    if not model.pipeline_dir.is_dir() or not model.gguf_file.is_file():
        return None
    # Hashing the ~1 MB file is cheap and catches a truncated or hand-edited copy.
    if marker.get("gguf_sha256") != _sha256(model.gguf_file):
        return None
    return model


@contextlib.contextmanager
def _locked(output_dir: Path) -> Iterator[None]:
    # Parallel test workers share one cache folder; only one of them should build.
    with (output_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_locked(output_dir: Path) -> TinyModel:
    final = _paths(output_dir)
    marker = output_dir / MARKER_FILENAME
    started = time.perf_counter()
    # Under the lock, any earlier staging folder belongs to a build that crashed.
    for stale in output_dir.glob(".build-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=output_dir))
    try:
        staged = _paths(staging)
        pipe = _tiny_pipeline()
        _save_pipeline(pipe, staged.pipeline_dir)
        _write_gguf(pipe.transformer.state_dict(), staged.gguf_file)
        # Drop the marker first: a crash while swapping leaves no marker, so the next ensure rebuilds.
        marker.unlink(missing_ok=True)
        if final.pipeline_dir.exists():
            final.pipeline_dir.rename(staging / "previous-pipeline")
        staged.pipeline_dir.rename(final.pipeline_dir)
        os.replace(staged.gguf_file, final.gguf_file)
        record = {"recipe_version": TINY_RECIPE_VERSION, "gguf_sha256": _sha256(final.gguf_file)}
        (staging / MARKER_FILENAME).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        os.replace(staging / MARKER_FILENAME, marker)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("built tiny FLUX Fill model in %s (%.2f s)", output_dir, time.perf_counter() - started)
    return final


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tiny_pipeline() -> Any:
    # fork_rng keeps the caller's global torch RNG untouched while we seed every component.
    with torch.random.fork_rng(devices=[]):
        return FluxFillPipeline(  # type: ignore[no-untyped-call]
            scheduler=_scheduler(),
            vae=_seeded(_vae),
            text_encoder=_seeded(_clip_text_encoder),
            tokenizer=_clip_tokenizer(),
            text_encoder_2=_seeded(_t5_encoder),
            tokenizer_2=_t5_tokenizer(),
            transformer=_seeded(_transformer),
        )


def _save_pipeline(pipe: Any, pipeline_dir: Path) -> None:
    # transformers draws a progress bar per saved text encoder; a sub-second build needs none.
    with no_progress_bars():
        pipe.save_pretrained(pipeline_dir, safe_serialization=True)


def _seeded(factory: Callable[[], _T]) -> _T:
    torch.manual_seed(_SEED)
    return factory()


def _scheduler() -> FlowMatchEulerDiscreteScheduler:
    # The real FLUX.1-Fill scheduler settings, so timestep shifting follows the same code path.
    return FlowMatchEulerDiscreteScheduler(  # type: ignore[no-untyped-call]
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


def _vae() -> AutoencoderKL:
    return AutoencoderKL(  # type: ignore[no-untyped-call]
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(_VAE_BLOCKS),
        up_block_types=("UpDecoderBlock2D",) * len(_VAE_BLOCKS),
        block_out_channels=_VAE_BLOCKS,
        layers_per_block=1,
        latent_channels=_LATENT_CHANNELS,
        norm_num_groups=4,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def _transformer() -> FluxTransformer2DModel:
    return FluxTransformer2DModel(  # type: ignore[no-untyped-call]
        patch_size=1,
        in_channels=8 * _LATENT_CHANNELS + 4 * _VAE_SCALE_FACTOR**2,
        out_channels=4 * _LATENT_CHANNELS,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=_HEAD_DIM,
        num_attention_heads=_HEADS,
        joint_attention_dim=_TEXT_DIM,
        pooled_projection_dim=_TEXT_DIM,
        guidance_embeds=True,
        axes_dims_rope=_AXES_DIMS_ROPE,
    )


def _clip_text_encoder() -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(_clip_vocab()),
        hidden_size=_TEXT_DIM,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=_CLIP_MAX_LENGTH,
        projection_dim=_TEXT_DIM,
        # Our vocab's own ids; the pooled output is read at the first eos token.
        bos_token_id=len(_clip_vocab()) - 2,
        eos_token_id=len(_clip_vocab()) - 1,
        pad_token_id=len(_clip_vocab()) - 1,
    )
    return CLIPTextModel(config)


def _t5_encoder() -> T5EncoderModel:
    config = T5Config(
        vocab_size=len(_t5_vocab()),
        d_model=_TEXT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=1,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
    )
    return T5EncoderModel(config)


def _clip_vocab() -> dict[str, int]:
    # CLIP's byte-level alphabet, alone and word-final, so any prompt tokenizes without unknowns.
    alphabet = sorted(ByteLevel.alphabet())
    pieces = [*alphabet, *(char + "</w>" for char in alphabet), "<|startoftext|>", "<|endoftext|>"]
    return {piece: index for index, piece in enumerate(pieces)}


def _clip_tokenizer() -> CLIPTokenizer:
    # No merges: every character is its own token, enough for a random-weight text encoder.
    return CLIPTokenizer(vocab=_clip_vocab(), merges=[], model_max_length=_CLIP_MAX_LENGTH)


def _t5_vocab() -> list[tuple[str, float]]:
    # A hand-written Unigram vocab: sentencepiece training needs protobuf gencode newer than the pinned
    # runtime, and a random-weight model gains nothing from learned pieces. Ids 0-2 follow T5's layout.
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    words = sorted({word for line in _T5_CORPUS for word in line.replace(",", " ").split()})
    chars = ["\u2581", *"abcdefghijklmnopqrstuvwxyz0123456789.,-'"]
    # Whole words score above single characters so the max-likelihood split prefers them.
    return specials + [("\u2581" + word, -5.0) for word in words] + [(char, -10.0) for char in chars]


def _t5_tokenizer() -> T5Tokenizer:
    return T5Tokenizer(vocab=_t5_vocab(), extra_ids=0, model_max_length=TINY_MAX_SEQUENCE_LENGTH)


def _write_gguf(state: dict[str, torch.Tensor], gguf_file: Path) -> None:
    # diffusers key names: its BFL-name converter assumes the real model's width of 3072.
    writer = gguf.GGUFWriter(str(gguf_file), arch="flux")
    q8_0 = gguf.GGMLQuantizationType.Q8_0
    block_size = gguf.GGML_QUANT_SIZES[q8_0][0]
    for name in sorted(state):
        array = state[name].to(torch.float32).numpy()
        if array.ndim == 2 and array.shape[-1] % block_size == 0:
            quantized = gguf.quants.quantize(array, q8_0)
            writer.add_tensor(name, quantized, raw_shape=quantized.shape, raw_dtype=q8_0)
        else:
            # Biases, norms and odd shapes stay F32, as in the published FLUX GGUFs.
            writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
