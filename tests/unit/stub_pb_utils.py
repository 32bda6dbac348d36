"""A stand-in for `triton_python_backend_utils`, which only exists inside Triton's Python stub."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1


class TritonError:
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

    def __init__(self, message: str, code: int = 0) -> None:
        self._message = message
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name = name
        self._array = array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor] | None = None, error: TritonError | None = None) -> None:
        self._outputs = output_tensors or []
        self._error = error

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def output_tensors(self) -> list[Tensor]:
        return self._outputs


@dataclass
class ResponseSender:
    """Records what a decoupled model sends; `cancel_after` responses it reports the caller gone."""

    cancel_after: int | None = None
    sent: list[tuple[InferenceResponse | None, int]] = field(default_factory=list)

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        self.sent.append((response, flags))

    def is_cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.sent) >= self.cancel_after


class InferenceRequest:
    """An incoming request (tensors, sender, cancellation) or a BLS request (model_name, inputs, exec)."""

    # Set by tests: the responses a BLS exec yields for a given request.
    bls_handler: ClassVar[Callable[["InferenceRequest"], list[InferenceResponse]] | None] = None

    def __init__(
        self,
        tensors: dict[str, Tensor] | None = None,
        *,
        sender: ResponseSender | None = None,
        request_id: str = "",
        cancelled: Callable[[], bool] = lambda: False,
        model_name: str = "",
        inputs: list[Tensor] | None = None,
        requested_output_names: list[str] | None = None,
    ) -> None:
        self.tensors = tensors or {}
        self.sender = sender or ResponseSender()
        self._request_id = request_id
        self._cancelled = cancelled
        self.model_name = model_name
        self.inputs = inputs or []
        self.requested_output_names_value = requested_output_names or []

    def get_response_sender(self) -> ResponseSender:
        return self.sender

    def requested_output_names(self) -> list[str]:
        return self.requested_output_names_value

    def request_id(self) -> str:
        return self._request_id

    def is_cancelled(self) -> bool:
        return self._cancelled()

    def exec(self, decoupled: bool = False) -> Iterator[InferenceResponse]:
        assert decoupled
        assert InferenceRequest.bls_handler is not None
        yield from InferenceRequest.bls_handler(self)


class Logger:
    lines: ClassVar[list[tuple[str, str]]] = []

    @classmethod
    def log_info(cls, message: str) -> None:
        cls.lines.append(("info", message))

    @classmethod
    def log_warn(cls, message: str) -> None:
        cls.lines.append(("warn", message))

    @classmethod
    def log_error(cls, message: str) -> None:
        cls.lines.append(("error", message))

    @classmethod
    def log_verbose(cls, message: str) -> None:
        cls.lines.append(("verbose", message))


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return request.tensors.get(name)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors() if t.name() == name), None)


class MetricFamily:
    """Keeps every value so tests can read what the model exported."""

    COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
    registry: ClassVar[dict[str, "MetricFamily"]] = {}

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name, self.description, self.kind = name, description, kind
        self.metrics: list[Metric] = []
        MetricFamily.registry[name] = self

    def Metric(self, labels: dict[str, str], buckets: list[float] | None = None) -> "Metric":  # noqa: N802
        metric = Metric(labels, buckets)
        self.metrics.append(metric)
        return metric


@dataclass
class Metric:
    labels: dict[str, str]
    buckets: list[float] | None
    value: float = 0.0
    observations: list[float] = field(default_factory=list)

    def increment(self, amount: float) -> None:
        self.value += amount

    def set(self, value: float) -> None:
        self.value = value

    def observe(self, value: float) -> None:
        self.observations.append(value)
