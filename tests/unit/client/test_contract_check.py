"""A server model declaring other tensors than the contract is refused with every difference named."""

from typing import Any

import pytest

from fluxfill.client.contract_check import check_metadata
from fluxfill.client.errors import ContractMismatchError
from fluxfill.inpaint.contract import INPUTS, OUTPUTS, STREAM_OUTPUTS


def metadata(inputs: Any = INPUTS, outputs: Any = OUTPUTS, grpc: bool = False) -> dict[str, Any]:
    def entry(spec: Any) -> dict[str, Any]:
        # gRPC's JSON metadata spells int64 dims as strings.
        shape = [str(d) for d in spec.shape] if grpc else list(spec.shape)
        return {"name": spec.name, "datatype": spec.datatype, "shape": shape}

    return {"name": "m", "inputs": [entry(s) for s in inputs], "outputs": [entry(s) for s in outputs]}


@pytest.mark.parametrize("grpc", [False, True])
def test_the_contract_itself_passes(grpc: bool) -> None:
    check_metadata("m", metadata(grpc=grpc), INPUTS, OUTPUTS)
    check_metadata("m", metadata(outputs=STREAM_OUTPUTS, grpc=grpc), INPUTS, STREAM_OUTPUTS)


def test_every_difference_is_named() -> None:
    served = metadata()
    served["inputs"] = [e for e in served["inputs"] if e["name"] != "SEED"]
    served["inputs"][1] = {"name": "MASK", "datatype": "FP32", "shape": [-1, -1, 1]}
    served["outputs"].append({"name": "EXTRA", "datatype": "INT32", "shape": [1]})
    with pytest.raises(ContractMismatchError) as caught:
        check_metadata("flux_fill", served, INPUTS, OUTPUTS)
    message = str(caught.value)
    assert message.startswith("model 'flux_fill' on the server does not match this client's tensor contract")
    assert "input SEED is missing on the server" in message
    assert "input MASK is FP32 [-1, -1, 1] on the server, UINT8 [-1, -1] in this client" in message
    assert "output EXTRA exists on the server but not in this client" in message
    assert caught.value.exit_code == 3
