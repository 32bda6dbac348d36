"""The InpaintModel port over Triton: flux_fill_stream over a gRPC stream, or unary flux_fill (gRPC or HTTP).

Every call waits on a queue fed by tritonclient's thread, polling briefly, so a cancel or the deadline is
noticed within `POLL_S`; leaving the wait without a result cancels the gRPC call, which stops the run on the
server within one step. HTTP cannot be cancelled: the run stops on the server at its TIMEOUT_S instead.

Every call is bounded: readiness asks with a timeout (a frozen server must read as not ready, not block), and
a run that reaches its deadline is the job's fault only if it ran: a stream that never got its first step, or
a server that does not answer a readiness check then, is Triton unavailable (the job is given back for later).
"""

import contextlib
import functools
import math
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from fluxfill.bridge.adapters.triton_errors import map_triton_exception
from fluxfill.bridge.context import CropGeometry
from fluxfill.bridge.errors import (
    BridgeError,
    JobCancelledError,
    JobDeadlineExceededError,
    TritonUnavailableError,
)
from fluxfill.bridge.ports import InferenceRequest, InferenceResult, ProgressCallback, RunControl
from fluxfill.inpaint.config import flatten_triton_parameters, parse_model_config
from fluxfill.inpaint.contract import (
    INPUTS,
    MAX_TIMEOUT_S,
    MODEL_NAME,
    PRIORITY_BULK,
    PRIORITY_URGENT,
    STREAM_MODEL_NAME,
    contract_arrays,
)

logger = structlog.get_logger(__name__)
POLL_S = 0.05
READY_TIMEOUT_S = 5.0
# At a run's deadline: a server that cannot say READY within this is hung, not slow.
DEADLINE_PROBE_TIMEOUT_S = 2.0
# After a failed read of the model's crop parameters, whole photos are sent this long before the next try.
GEOMETRY_RETRY_S = 30.0
_Reply = tuple[Any, BaseException | None]
# A question about Triton (readiness, the model's parameters) asks on a connection of its own: gRPC shares one
# among a process's channels to an address, with its reconnect backoff (1 s, growing to 2 minutes while Triton
# is away), and a readiness check failed at once with another call's old refusal although Triton was back.
# Runs share one, as before (HTTP/2 carries them side by side: no descriptor per job in flight).
OWN_CONNECTION_ARGS = [("grpc.use_local_subchannel_pool", 1)]


def request_arrays(request: InferenceRequest, timeout_s: float) -> dict[str, npt.NDArray[Any]]:
    """The contract's tensors for one request; absent optionals are left out."""
    return contract_arrays(
        request.image,
        request.mask,
        request.prompt,
        steps=request.steps,
        guidance=request.guidance,
        seed=request.seed,
        timeout_s=timeout_s,
    )


class TritonInpaintModel:
    """FLUX.1-Fill on one Triton server; a fresh client per call (gRPC's runs share one connection)."""

    def __init__(self, url: str, protocol: str = "grpc-stream") -> None:
        if protocol not in {"grpc-stream", "grpc", "http"}:
            raise ValueError(f"unknown Triton protocol {protocol!r}: use grpc-stream, grpc or http")
        self.protocol = protocol
        self.name = STREAM_MODEL_NAME if protocol == "grpc-stream" else MODEL_NAME
        self._url = url
        self._module: Any = httpclient if protocol == "http" else grpcclient
        self._geometry_lock = threading.Lock()
        self._geometry: CropGeometry | None = None
        self._geometry_tried_at = -math.inf
        self._seen_unready = False
        self._unready_reason = ""

    def _client(self, timeout_s: float | None = None, *, own_connection: bool = False) -> Any:
        if self._module is grpcclient:
            if not own_connection:  # tritonclient's channel arguments: no cap on a message's size
                return grpcclient.InferenceServerClient(self._url)
            return grpcclient.InferenceServerClient(self._url, channel_args=OWN_CONNECTION_ARGS)
        if timeout_s is None:
            return httpclient.InferenceServerClient(self._url)
        return httpclient.InferenceServerClient(self._url, network_timeout=timeout_s)

    def is_ready(self, timeout_s: float = READY_TIMEOUT_S) -> bool:
        """Whether Triton reports the model READY within `timeout_s`; False when it cannot be asked."""
        reason = ""
        try:
            client = self._client(timeout_s=timeout_s, own_connection=True)
            try:
                if self._module is httpclient:
                    ready = bool(client.is_model_ready(self.name))
                else:
                    ready = bool(client.is_model_ready(self.name, client_timeout=timeout_s))
            finally:
                client.close()
            if not ready:
                reason = (
                    f"Triton at {self._url} does not report {self.name} READY (loading, or failed to load)"
                )
        except Exception as error:  # readiness is a yes/no question: any failure to answer is a no
            ready = False
            said = " ".join(str(error).split())[:300] or type(error).__name__
            reason = f"cannot ask Triton at {self._url} ({self.protocol}): {said}"
        self._unready_reason = reason
        # The model may come back reloaded, with other parameters: read them again once it is back (and not
        # only after GEOMETRY_RETRY_S, when a read failed while it was away).
        if not ready or self._seen_unready:
            self._forget_geometry()
        self._seen_unready = not ready
        return ready

    def unready_reason(self) -> str:
        """Why the last `is_ready` said no (a wrong URL or port, a server away, a model loading or failed)."""
        return self._unready_reason

    def crop_geometry(self) -> CropGeometry | None:
        """flux_fill_stream's crop parameters (the unary model forwards to it), read once, and again once
        Triton is back after it was seen not ready; None (logged) when they cannot be read or parsed, tried
        again after GEOMETRY_RETRY_S."""
        with self._geometry_lock:
            if self._geometry is None and time.monotonic() - self._geometry_tried_at >= GEOMETRY_RETRY_S:
                self._geometry_tried_at = time.monotonic()
                self._geometry = self._read_geometry()
            return self._geometry

    def _forget_geometry(self) -> None:
        with self._geometry_lock:
            self._geometry, self._geometry_tried_at = None, -math.inf

    def _read_geometry(self) -> CropGeometry | None:
        try:
            client = self._client(timeout_s=READY_TIMEOUT_S, own_connection=True)
            try:
                if self._module is httpclient:
                    config = client.get_model_config(STREAM_MODEL_NAME)
                else:
                    answer = client.get_model_config(
                        STREAM_MODEL_NAME, as_json=True, client_timeout=READY_TIMEOUT_S
                    )
                    config = answer["config"]
            finally:
                client.close()
            return parse_model_config(flatten_triton_parameters(config)).crop_geometry
        except Exception as error:  # an optimisation's input: without it, whole photos are sent
            logger.warning(
                "the model's crop parameters cannot be read; whole photos are sent to Triton",
                error=str(error) or type(error).__name__,
            )
            return None

    def _past_deadline(self, started: bool = True) -> BridgeError:
        """What a run at its deadline means: `started` is False for a stream that never reported a step."""
        if not started:
            return TritonUnavailableError(
                "the run reached its deadline before Triton reported its first step: it never ran"
            )
        if self.is_ready(DEADLINE_PROBE_TIMEOUT_S):
            return JobDeadlineExceededError("deadline exceeded while Triton was running")
        return TritonUnavailableError(
            f"the run reached its deadline and Triton did not answer a readiness check within "
            f"{DEADLINE_PROBE_TIMEOUT_S:g} s: the server is hung or gone"
        )

    def infer(
        self, request: InferenceRequest, *, on_progress: ProgressCallback, control: RunControl
    ) -> InferenceResult:
        """Run one request; see the module docstring for how it stops."""
        remaining = control.deadline - time.monotonic()
        if remaining <= 0:
            raise JobDeadlineExceededError("deadline exceeded before the Triton call")
        # The call's own timeout (gRPC's, HTTP's socket) is at most the longest time limit the model takes, as
        # TIMEOUT_S is (contract_arrays): gRPC fails a call with an infinite timeout at once, and a deadline
        # of infinity (the benchmarks') sent a TIMEOUT_S the model refused. The wait watches the deadline.
        remaining = min(remaining, MAX_TIMEOUT_S)
        inputs = []
        # The model stops the run there, or at its own max_run_seconds if that comes first.
        for name, array in request_arrays(request, remaining).items():
            spec = next(spec for spec in INPUTS if spec.name == name)
            tensor = self._module.InferInput(name, list(array.shape), spec.datatype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        priority = PRIORITY_URGENT if request.urgent else PRIORITY_BULK
        if self.protocol == "grpc-stream":
            return self._stream(inputs, priority, on_progress, control)
        if self.protocol == "grpc":
            return self._unary_grpc(inputs, priority, control, remaining)
        return self._unary_http(inputs, priority, control, remaining)

    def _stream(
        self, inputs: list[Any], priority: int, on_progress: ProgressCallback, control: RunControl
    ) -> InferenceResult:
        client = self._client()
        replies: queue.Queue[_Reply] = queue.Queue()
        finished = started = False
        try:
            try:
                client.start_stream(callback=lambda result, error: replies.put((result, error)))
                client.async_stream_infer(self.name, inputs, priority=priority)
            except Exception as error:  # the one boundary: tritonclient's errors become ours
                raise map_triton_exception(error) from None
            while True:
                result = _next_reply(replies, control, functools.partial(self._past_deadline, started))
                started = True
                step, total = result.as_numpy("STEP"), result.as_numpy("TOTAL_STEPS")
                if step is not None and total is not None and int(total[0]) > 0:
                    on_progress(int(step[0]), int(total[0]))
                if result.as_numpy("IMAGE") is not None:
                    finished = True
                    return _result(result)
        finally:
            # A cancel, the deadline or an error: cancelling the stream stops the run on the server.
            with contextlib.suppress(Exception):
                client.stop_stream(cancel_requests=not finished)
            client.close()

    def _unary_grpc(
        self, inputs: list[Any], priority: int, control: RunControl, remaining: float
    ) -> InferenceResult:
        client = self._client()
        replies: queue.Queue[_Reply] = queue.Queue()
        finished = False
        call: Any = None
        try:
            try:
                call = client.async_infer(
                    self.name,
                    inputs,
                    callback=lambda result, error: replies.put((result, error)),
                    priority=priority,
                    client_timeout=remaining,
                )
            except Exception as error:  # the one boundary: tritonclient's errors become ours
                raise map_triton_exception(error) from None
            result = _result(_next_reply(replies, control, self._past_deadline))
            finished = True
            return result
        finally:
            if call is not None and not finished:
                call.cancel()
            client.close()

    def _unary_http(
        self, inputs: list[Any], priority: int, control: RunControl, remaining: float
    ) -> InferenceResult:
        # The server stops at TIMEOUT_S; the socket waits a little longer so that its own answer comes back.
        client = self._client(timeout_s=remaining + 5.0)
        replies: queue.Queue[_Reply] = queue.Queue()

        def call() -> None:
            try:
                replies.put((client.infer(self.name, inputs, priority=priority), None))
            except Exception as error:  # handed to the waiting thread, which maps it
                replies.put((None, error))
            finally:
                client.close()

        threading.Thread(target=call, name="triton-http", daemon=True).start()
        try:
            return _result(_next_reply(replies, control, self._past_deadline))
        except JobCancelledError:
            logger.warning("HTTP cannot cancel a Triton run: it goes on until its TIMEOUT_S on the server")
            raise


def _next_reply(
    replies: "queue.Queue[_Reply]", control: RunControl, past_deadline: Callable[[], BridgeError]
) -> Any:
    while True:
        if control.cancel.is_set():
            raise JobCancelledError("cancelled while Triton was running")
        if time.monotonic() > control.deadline:
            raise past_deadline()
        try:
            result, error = replies.get(timeout=POLL_S)
        except queue.Empty:
            continue
        if error is not None:
            raise map_triton_exception(error)
        return result


def _result(result: Any) -> InferenceResult:
    image = np.ascontiguousarray(result.as_numpy("IMAGE"), dtype=np.uint8)
    return InferenceResult(image, int(result.as_numpy("SEED")[0]))
