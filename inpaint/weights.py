"""Locate and verify weights on local disk; nothing is ever downloaded."""

import hashlib
import json
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
    for path in weight_files(directory):
        digest.update(f"{path.relative_to(directory).as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def weight_files(directory: Path) -> list[Path]:
    """Every weight file under `directory`, sorted."""
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def directory_problem(directory: Path, *, transformer_elsewhere: bool = False) -> str | None:
    """Why `directory` is not a complete diffusers FLUX.1-Fill directory, or None when it is.

    Read from model_index.json (no weights are opened): every component it names must be a subdirectory with
    files, and the weight-bearing ones must hold weights. Cheap enough to run before starting a server.
    """
    if not directory.is_dir():
        return f"weights_dir '{directory}' is not a directory"
    index_path = directory / "model_index.json"
    if not index_path.is_file():
        return f"weights_dir '{directory}' is not a diffusers FLUX.1-Fill directory (no model_index.json)"
    try:
        index = json.loads(index_path.read_text())
    except (ValueError, OSError) as error:
        return f"weights_dir '{directory}': model_index.json is unreadable ({error})"
    if not isinstance(index, dict):
        return f"weights_dir '{directory}': model_index.json is not a JSON object"
    components = [name for name, value in index.items() if isinstance(value, list) and name[:1] != "_"]
    missing = []
    for name in components:
        if name == "transformer" and transformer_elsewhere:
            continue
        folder = directory / name
        empty = not folder.is_dir() or not any(folder.iterdir())
        # Tokenizers and schedulers hold only JSON and vocabularies; the rest must hold weights.
        weightless = name.startswith(("tokenizer", "scheduler"))
        if empty or (not weightless and not weight_files(folder)):
            missing.append(name)
    if missing:
        return f"weights_dir '{directory}' is incomplete: no weights for {', '.join(missing)}"
    return None


def weights_digest(config: ModelConfig) -> str:
    """The digest `weights_sha256` is compared with: the GGUF file's, else the directory's."""
    return file_sha256(config.gguf_file) if config.gguf_file else directory_digest(config.weights_dir)


def check_weights(config: ModelConfig) -> None:
    """Raise `WeightsError` unless the configured weights exist (and match `weights_sha256`)."""
    problem = directory_problem(config.weights_dir, transformer_elsewhere=config.gguf_file is not None)
    if problem is not None:
        raise WeightsError(problem)
    if config.gguf_file is not None and not config.gguf_file.is_file():
        raise WeightsError(f"gguf_file '{config.gguf_file}' does not exist")
    if config.weights_sha256 is not None:
        actual = weights_digest(config)
        if actual != config.weights_sha256:
            what = config.gguf_file or config.weights_dir
            raise WeightsError(
                f"weights_sha256 mismatch for '{what}': expected {config.weights_sha256}, got {actual}"
            )
