"""A weights directory is judged from model_index.json before anything loads: complete, or why not."""

import json
from pathlib import Path

from fluxfill.inpaint.weights import directory_problem

COMPONENTS = {
    "scheduler": ("scheduler_config.json",),
    "text_encoder": ("model.safetensors",),
    "text_encoder_2": ("model-00001-of-00002.safetensors",),
    "tokenizer": ("vocab.json",),
    "tokenizer_2": ("spiece.model",),
    "transformer": ("diffusion_pytorch_model.safetensors",),
    "vae": ("diffusion_pytorch_model.safetensors",),
}


def _weights(root: Path, skip: tuple[str, ...] = ()) -> Path:
    index = {"_class_name": "FluxFillPipeline", "_diffusers_version": "0.42.1"}
    for name, files in COMPONENTS.items():
        index[name] = ["diffusers", "Something"]  # type: ignore[assignment]
        if name in skip:
            continue
        (root / name).mkdir(parents=True)
        for file in files:
            (root / name / file).write_bytes(b"x")
    (root / "model_index.json").write_text(json.dumps(index))
    return root


def test_a_complete_directory_has_no_problem(tmp_path: Path) -> None:
    assert directory_problem(_weights(tmp_path)) is None


def test_missing_and_empty_components_are_named(tmp_path: Path) -> None:
    root = _weights(tmp_path, skip=("vae", "text_encoder_2"))
    (root / "text_encoder_2").mkdir()  # present but empty, as an interrupted copy leaves it
    expected = f"weights_dir '{root}' is incomplete: no weights for text_encoder_2, vae"
    assert directory_problem(root) == expected


def test_a_component_folder_without_weight_files_is_incomplete(tmp_path: Path) -> None:
    root = _weights(tmp_path)
    (root / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    (root / "transformer" / "config.json").write_text("{}")
    assert "no weights for transformer" in (directory_problem(root) or "")
    # With a GGUF transformer the folder's weights are not needed.
    assert directory_problem(root, transformer_elsewhere=True) is None


def test_not_a_directory_no_index_and_a_broken_index_are_told_apart(tmp_path: Path) -> None:
    assert "is not a directory" in (directory_problem(tmp_path / "missing") or "")
    assert "no model_index.json" in (directory_problem(tmp_path) or "")
    (tmp_path / "model_index.json").write_text("{not json")
    assert "model_index.json is unreadable" in (directory_problem(tmp_path) or "")
    (tmp_path / "model_index.json").write_text("[]")
    assert "not a JSON object" in (directory_problem(tmp_path) or "")
