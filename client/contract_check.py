"""Compare a server's model metadata with the tensor contract this client was built with."""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fluxfill.client.errors import ContractMismatchError
from fluxfill.inpaint.contract import TensorSpec

Declared = dict[str, tuple[str, tuple[int, ...]]]


def declared_tensors(entries: Iterable[Mapping[str, Any]]) -> Declared:
    """name -> (datatype, shape) from metadata entries; gRPC's JSON spells int64 dims as strings."""
    return {
        str(entry["name"]): (str(entry["datatype"]), tuple(int(dim) for dim in entry.get("shape", ())))
        for entry in entries
    }


def _differences(kind: str, expected: Sequence[TensorSpec], served: Declared) -> list[str]:
    problems = []
    wanted = {spec.name: (spec.datatype, spec.shape) for spec in expected}
    for name, (datatype, shape) in wanted.items():
        if name not in served:
            problems.append(f"{kind} {name} is missing on the server")
        elif served[name] != (datatype, shape):
            have_type, have_shape = served[name]
            problems.append(
                f"{kind} {name} is {have_type} {list(have_shape)} on the server, "
                f"{datatype} {list(shape)} in this client"
            )
    problems.extend(
        f"{kind} {name} exists on the server but not in this client" for name in served if name not in wanted
    )
    return problems


def check_metadata(
    model: str, metadata: Mapping[str, Any], inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> None:
    """Raise ContractMismatchError naming every tensor that differs from the contract."""
    problems = _differences("input", inputs, declared_tensors(metadata.get("inputs", ())))
    problems += _differences("output", outputs, declared_tensors(metadata.get("outputs", ())))
    if problems:
        raise ContractMismatchError(
            f"model {model!r} on the server does not match this client's tensor contract "
            f"(upgrade the client or the server): {'; '.join(problems)}"
        )
