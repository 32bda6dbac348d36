"""Weights are checked on disk before anything loads."""

from pathlib import Path

import pytest

from fluxfill.inpaint.errors import WeightsError
from fluxfill.inpaint.weights import check_weights, directory_digest, file_sha256
from tests.support import make_config


@pytest.fixture
def weights_dir(tmp_path: Path) -> Path:
    (tmp_path / "model_index.json").write_text("{}")
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    (tmp_path / "vae.safetensors").write_bytes(b"vae")
    return tmp_path


def test_directory_digest_covers_weight_files_and_their_names(weights_dir: Path) -> None:
    before = directory_digest(weights_dir)
    (weights_dir / "README.md").write_text("not a weight file")
    assert directory_digest(weights_dir) == before
    (weights_dir / "vae.safetensors").write_bytes(b"vaf")
    assert directory_digest(weights_dir) != before


def test_matching_digest_passes(weights_dir: Path) -> None:
    check_weights(make_config(weights_dir=str(weights_dir), weights_sha256=directory_digest(weights_dir)))


def test_mismatching_digest_names_both_digests(weights_dir: Path) -> None:
    with pytest.raises(WeightsError, match=r"weights_sha256 mismatch .* expected 0{64}, got [0-9a-f]{64}"):
        check_weights(make_config(weights_dir=str(weights_dir), weights_sha256="0" * 64))


def test_gguf_digest_is_the_file_sha256(weights_dir: Path) -> None:
    gguf = weights_dir / "t.gguf"
    gguf.write_bytes(b"GGUF")
    check_weights(
        make_config(weights_dir=str(weights_dir), gguf_file=str(gguf), weights_sha256=file_sha256(gguf))
    )


def test_missing_gguf_is_named(weights_dir: Path) -> None:
    with pytest.raises(WeightsError, match=r"gguf_file '.*missing\.gguf' does not exist"):
        check_weights(make_config(weights_dir=str(weights_dir), gguf_file=str(weights_dir / "missing.gguf")))
