"""config.pbtxt declares exactly the tensors of fluxfill.inpaint.contract."""

from tritonclient.grpc import model_config_pb2

from fluxfill.inpaint.contract import INPUTS, MODEL_NAME, OUTPUTS
from tests.support import read_model_config


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
