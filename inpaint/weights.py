"""Locate and verify weights on local disk; nothing is ever downloaded."""

import hashlib
from pathlib import Path

from fluxfill.inpaint.config import ModelConfig
from fluxfill.inpaint.errors import WeightsError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
_CHUNK = 8 * 1024 * 1024


def file_sha256(path: Path) -> str:
    """sha256 of one file, streamed."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def directory_digest(directory: Path) -> str:
    """sha256 over every weight file of a directory: its relative path and its own sha256, sorted."""
    digest = hashlib.sha256()
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    for path in files:
        digest.update(f"{path.relative_to(directory).as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def weights_digest(config: ModelConfig) -> str:
    """The digest `weights_sha256` is compared with: the GGUF file's, else the directory's."""
    return file_sha256(config.gguf_file) if config.gguf_file else directory_digest(config.weights_dir)


def check_weights(config: ModelConfig) -> None:
    """Raise `WeightsError` unless the configured weights exist (and match `weights_sha256`)."""
    if not (config.weights_dir / "model_index.json").is_file():
        raise WeightsError(
            f"weights_dir '{config.weights_dir}' is not a diffusers FLUX.1-Fill directory "
            "(no model_index.json)"
        )
    if config.gguf_file is not None and not config.gguf_file.is_file():
        raise WeightsError(f"gguf_file '{config.gguf_file}' does not exist")
    if config.weights_sha256 is not None:
        actual = weights_digest(config)
        if actual != config.weights_sha256:
            what = config.gguf_file or config.weights_dir
            raise WeightsError(
                f"weights_sha256 mismatch for '{what}': expected {config.weights_sha256}, got {actual}"
            )
