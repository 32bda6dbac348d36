"""config.pbtxt declares exactly the tensors of fluxfill.inpaint.contract, and what our callers send fits."""

import math

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2

from fluxfill.inpaint.contract import (
    INPUTS,
    MAX_TIMEOUT_S,
    MODEL_NAME,
    OUTPUTS,
    STREAM_MODEL_NAME,
    STREAM_OUTPUTS,
    contract_arrays,
)
from fluxfill.inpaint.request import build_request
from tests.support import FLUX_FILL_STREAM_CONFIG, make_config, read_model_config


def declared(
    tensor: model_config_pb2.ModelInput | model_config_pb2.ModelOutput,
) -> tuple[str, str, tuple[int, ...]]:
    # Triton spells BYTES as TYPE_STRING in config.pbtxt.
    datatype = (
        model_config_pb2.DataType.Name(tensor.data_type).removeprefix("TYPE_").replace("STRING", "BYTES")
    )
    return tensor.name, datatype, tuple(tensor.dims)


def test_config_pbtxt_inputs_match_the_contract() -> None:
    config = read_model_config()
    assert config.name == MODEL_NAME
    assert [declared(t) for t in config.input] == [(s.name, s.datatype, s.shape) for s in INPUTS]
    assert [t.optional for t in config.input] == [s.optional for s in INPUTS]


def test_config_pbtxt_outputs_match_the_contract() -> None:
    config = read_model_config()
    assert [declared(t) for t in config.output] == [(s.name, s.datatype, s.shape) for s in OUTPUTS]


def test_stream_config_declares_the_same_inputs_and_the_progress_outputs() -> None:
    config = read_model_config(FLUX_FILL_STREAM_CONFIG)
    assert config.name == STREAM_MODEL_NAME
    assert config.model_transaction_policy.decoupled
    assert [declared(t) for t in config.input] == [(s.name, s.datatype, s.shape) for s in INPUTS]
    assert [declared(t) for t in config.output] == [(s.name, s.datatype, s.shape) for s in STREAM_OUTPUTS]


def test_both_models_bound_their_queue_and_have_two_priorities() -> None:
    for config in (read_model_config(), read_model_config(FLUX_FILL_STREAM_CONFIG)):
        batching = config.dynamic_batching
        assert batching.priority_levels == 2
        assert batching.default_priority_level == 2
        assert 0 < batching.default_queue_policy.max_queue_size <= 64


@pytest.mark.parametrize("asked", [MAX_TIMEOUT_S, MAX_TIMEOUT_S + 1, 1e6, math.inf])
def test_a_time_limit_beyond_the_longest_the_model_takes_is_sent_as_that_and_taken(asked: float) -> None:
    """The client's `timeout` and the bridge's deadline go as TIMEOUT_S: one over a day was refused as bad
    input, although no run may last longer (max_run_seconds is at most a day)."""
    arrays = contract_arrays(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8), "", timeout_s=asked)
    assert arrays["TIMEOUT_S"].tolist() == [MAX_TIMEOUT_S]
    request = build_request(arrays, make_config(max_run_seconds=str(MAX_TIMEOUT_S)))
    assert request.time_limit_s == MAX_TIMEOUT_S
