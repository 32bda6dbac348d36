"""Call the flux_fill model over gRPC or HTTP with the tensor contract of fluxfill.inpaint.contract."""

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from fluxfill.client.errors import map_triton_error
from fluxfill.inpaint.contract import INPUTS, MODEL_NAME

Protocol = Literal["grpc", "http"]
_NUMPY_TYPES: dict[str, type[np.generic]] = {
    "UINT8": np.uint8,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP32": np.float32,
    "BYTES": np.object_,
}


@dataclass(frozen=True)
class InpaintOutput:
    """The inpainted image (input height x width x 3) and the seed the server used."""

    image: npt.NDArray[np.uint8]
    seed: int


def contract_arrays(
    image: npt.NDArray[np.uint8],
    mask: npt.NDArray[np.uint8],
    prompt: str,
    *,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int | None = None,
) -> dict[str, npt.NDArray[Any]]:
    """The request's tensors by name, typed as the contract declares; absent optionals are left out."""
    values: dict[str, object] = {
        "IMAGE": image,
        "MASK": mask,
        "PROMPT": [prompt.encode("utf-8")],
        "STEPS": None if steps is None else [steps],
        "GUIDANCE": None if guidance is None else [guidance],
        "SEED": None if seed is None else [seed],
    }
    arrays: dict[str, npt.NDArray[Any]] = {}
    for spec in INPUTS:
        value = values[spec.name]
        if value is not None:
            arrays[spec.name] = np.asarray(value, dtype=_NUMPY_TYPES[spec.datatype])
    return arrays


class FluxFillClient:
    """A synchronous client for one Triton server."""

    def __init__(self, url: str, protocol: Protocol = "grpc", model_name: str = MODEL_NAME) -> None:
        self.protocol = protocol
        self.model_name = model_name
        module = grpcclient if protocol == "grpc" else httpclient
        self._module: Any = module
        self._client: Any = module.InferenceServerClient(url=url)

    def inpaint(
        self,
        image: npt.NDArray[np.uint8],
        mask: npt.NDArray[np.uint8],
        prompt: str = "",
        *,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int | None = None,
    ) -> InpaintOutput:
        """Inpaint `image` where `mask` >= 128; raises a `FluxFillError` subclass on failure."""
        inputs = []
        arrays = contract_arrays(image, mask, prompt, steps=steps, guidance=guidance, seed=seed)
        for spec in INPUTS:
            if spec.name in arrays:
                tensor = self._module.InferInput(spec.name, list(arrays[spec.name].shape), spec.datatype)
                tensor.set_data_from_numpy(arrays[spec.name])
                inputs.append(tensor)
        try:
            result = self._client.infer(self.model_name, inputs)
        except InferenceServerException as error:
            raise map_triton_error(error) from None
        return InpaintOutput(result.as_numpy("IMAGE"), int(result.as_numpy("SEED")[0]))

    def close(self) -> None:
        """Release the connection."""
        self._client.close()

    def __enter__(self) -> "FluxFillClient":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
