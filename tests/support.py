"""Helpers shared by the unit and integration tests."""

import contextlib
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt
from google.protobuf import text_format
from numpy.lib.stride_tricks import sliding_window_view
from tritonclient.grpc import model_config_pb2

from fluxfill.inpaint.config import ModelConfig, parse_model_config

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = REPO_ROOT / "model_repository"
FLUX_FILL_CONFIG = MODEL_REPOSITORY / "flux_fill" / "config.pbtxt"
# The streaming model holds the weights, so its config.pbtxt carries every parameter.
FLUX_FILL_STREAM_CONFIG = MODEL_REPOSITORY / "flux_fill_stream" / "config.pbtxt"


def read_model_config(path: Path = FLUX_FILL_CONFIG) -> model_config_pb2.ModelConfig:
    """Parse a config.pbtxt the way Triton does."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def repository_parameters() -> dict[str, str]:
    """The flux_fill parameters exactly as config.pbtxt ships them."""
    parameters = read_model_config(FLUX_FILL_STREAM_CONFIG).parameters
    return {key: value.string_value for key, value in parameters.items()}


def make_config(**overrides: str) -> ModelConfig:
    """The shipped configuration with some parameters replaced (values as config.pbtxt strings)."""
    return parse_model_config({**repository_parameters(), **overrides})


def within_distance(mask: npt.NDArray[np.bool_], radius: int) -> npt.NDArray[np.bool_]:
    """Pixels within Chebyshev distance `radius` of the mask, found by brute force (not by the code)."""
    window = 2 * radius + 1
    return np.asarray(sliding_window_view(np.pad(mask, radius), (window, window)).any(axis=(2, 3)))


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A port that takes connections and never answers (never accepted from): a half-open connection, a
    network that drops packets, a server frozen in place."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


@contextlib.contextmanager
def frozen_grpc_server() -> Iterator[int]:
    """The port of a gRPC server that connects and takes every call, then never answers one: a server frozen
    mid-command, where unanswered_port's never completes the connection."""
    import grpc  # type: ignore[import-untyped]

    released = threading.Event()

    class NeverAnswers(grpc.GenericRpcHandler):  # type: ignore[misc]
        def service(self, _details: object) -> object:
            def hold(_request: bytes, _context: object) -> bytes:
                released.wait()
                return b""

            return grpc.unary_unary_rpc_method_handler(hold)

    server = grpc.server(ThreadPoolExecutor(max_workers=8), handlers=[NeverAnswers()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        released.set()
        server.stop(grace=0)


# What a gRPC server (another tritonserver's gRPC port) answers an HTTP/1 request with: HTTP/2's SETTINGS.
HTTP2_SETTINGS = bytes.fromhex("000018040000000000000400400000000500400000000600004000fe0300000001")


def answer_every_connection(listener: socket.socket, answer: bytes) -> None:
    """Answer each connection to `listener` with `answer` and close it once the client's request came (as
    a gRPC server does: its SETTINGS first, then it reads the preface), until the listener is closed."""
    while True:
        try:
            connection, _ = listener.accept()
        except OSError:  # closed: the test is over
            return
        with connection:
            connection.sendall(answer)
            connection.settimeout(5)
            with contextlib.suppress(OSError):
                connection.recv(65536)
