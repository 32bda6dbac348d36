"""config.pbtxt parameters become a typed config; every bad parameter is named in the error."""

from pathlib import Path

import pytest

from fluxfill.inpaint.config import PARAMETER_NAMES, ConfigError, parse_model_config
from tests.support import make_config, repository_parameters


def test_shipped_parameters_parse_into_typed_values() -> None:
    config = parse_model_config(repository_parameters())
    assert config.weights_dir == Path("/models/weights/FLUX.1-Fill-dev")
    assert config.gguf_file is None
    assert config.weights_sha256 is None
    assert config.default_steps == 28
    assert config.default_guidance == 30.0
    assert config.crop_to_mask is True
    assert config.offload == "auto"


def test_config_pbtxt_sets_every_parameter_the_schema_knows() -> None:
    assert set(repository_parameters()) == set(PARAMETER_NAMES)


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("weights_dir", "", "must be a path"),
        ("weights_dir", "weights/flux", "must be an absolute path, got 'weights/flux'"),
        ("gguf_file", "flux-q4.gguf", "must be an absolute path"),
        ("weights_sha256", "abc", "64 hexadecimal"),
        ("dtype", "fp8", "must be one of auto, bfloat16, float16, float32"),
        ("offload", "disk", "must be one of none, model, sequential, auto"),
        ("default_steps", "ten", "must be an integer"),
        ("default_steps", "0", "between 1 and"),
        ("max_steps", "5", "exceeds max_steps"),
        ("default_guidance", "nan", "between 0.0 and 100.0"),
        ("default_guidance", "-1", "between 0.0 and 100.0"),
        ("max_input_pixels", "0", "between 1 and"),
        ("crop_to_mask", "maybe", "must be true or false"),
        ("crop_margin", "11", "between 0.0 and 10.0"),
        ("feather_pixels", "-2", "between 0 and"),
        ("max_working_pixels", "100", "between 256 and"),
        ("min_working_pixels", "4194304", "exceeds max_working_pixels"),
        ("max_sequence_length", "513", "between 1 and 512"),
    ],
)
def test_each_bad_parameter_is_named(name: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(**{name: value})
    expected_name = "default_steps" if problem == "exceeds max_steps" else name
    assert caught.value.parameter == expected_name
    assert f"parameter '{expected_name}'" in str(caught.value)
    assert problem in str(caught.value)


def test_missing_parameter_is_named() -> None:
    parameters = repository_parameters()
    del parameters["feather_pixels"]
    with pytest.raises(ConfigError, match="parameter 'feather_pixels': missing"):
        parse_model_config(parameters)


def test_unknown_parameter_is_refused_so_typos_do_not_pass_silently() -> None:
    with pytest.raises(ConfigError, match="parameter 'defualt_steps': unknown parameter"):
        parse_model_config({**repository_parameters(), "defualt_steps": "4"})


def test_optional_values_accept_empty_and_normalise_case() -> None:
    config = make_config(gguf_file="/w/t.gguf", weights_sha256="AB" * 32)
    assert config.gguf_file == Path("/w/t.gguf")
    assert config.weights_sha256 == "ab" * 32
