"""The Python client: inpaint over gRPC (streamed, with progress) or HTTP, with the tensor contract of
fluxfill.inpaint.contract.

Over gRPC the client calls `flux_fill_stream`: progress per step, and a cancel (a `CancelHandle`, Ctrl-C, or
the timeout) cancels the stream, which stops the run on the server within one step. Over HTTP it calls the
unary `flux_fill`: no progress, and Triton cannot cancel an HTTP request, so a cancel ends the call's wait
and the server finishes the run; the timeout is sent as TIMEOUT_S, which the server enforces, and the socket
waits `HTTP_GRACE_S` longer for that answer. A call given no timeout waits as long as the server works on it
(a run behind others in its queue takes minutes on an L4); the `KEEPALIVE` still ends it when the server stops
answering: frozen, or cut off by the network. Over gRPC it is gRPC's own pings on the call's connection; over
HTTP, which has none, a liveness request on a connection of its own.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

import gevent
import numpy.typing as npt
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from fluxfill.client.contract_check import check_metadata
from fluxfill.client.errors import (
    CancelledError,
    DeadlineExceededError,
    InvalidInputError,
    ServiceUnavailableError,
    mapped_errors,
)
from fluxfill.client.images import ImageLike, MaskLike, to_mask, to_rgb
from fluxfill.client.retry import RetryPolicy, call_with_retries
from fluxfill.client.streaming import (
    CancelHandle,
    InpaintOutput,
    ProgressCallback,
    stream_call,
)
from fluxfill.inpaint.contract import (
    INPUTS,
    MODEL_NAME,
    OUTPUTS,
    STREAM_MODEL_NAME,
    STREAM_OUTPUTS,
    contract_arrays,
)

__all__ = ["CancelHandle", "FluxFillClient", "InpaintOutput", "Protocol", "contract_arrays"]

Protocol = Literal["grpc", "http"]
DEFAULT_PORTS: dict[str, int] = {"grpc": 8001, "http": 8000}
HTTP_GRACE_S = 1.0
# How often a waiting HTTP call wakes: to look at its CancelHandle, and to let Python run a signal's handler.
# A Ctrl-C that the kernel hands to another thread of the process (gevent's resolver threads) does not wake
# gevent's hub from its poll: the call ignored it until the socket's timeout (30 s for the contract check).
WAKE_S = 0.1
METADATA_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Keepalive:
    """How a call finds its server gone silent: after `interval_s` without an answer it asks the server
    whether it lives (gRPC: a ping on the call's connection; HTTP: GET /v2/health/live on a connection of its
    own), and gives the call up (ServiceUnavailableError) when that is not answered within `timeout_s`."""

    interval_s: float
    timeout_s: float


# A server stopped (SIGSTOP, a VM paused) or cut off mid-call (a partition, a NAT that dropped the connection
# while the call waited in the queue) answers nothing and closes nothing: a call given no timeout waited for
# good. Pinged, it fails within about 6 minutes. Not sooner: Triton, by default, takes a ping within 300 s
# of the last one, with no data sent between (a call waiting in the queue), for abuse, and closes the
# connection at the third (its --grpc-http2-min-recv-ping-interval-without-data and max-ping-strikes).
# HTTP takes the same, so that either protocol gives up on a silent server in the same time.
KEEPALIVE = Keepalive(interval_s=330.0, timeout_s=20.0)
# The longest wait between attempts to connect to a server that is away (gRPC's, by default, reaches 2 min).
RECONNECT_BACKOFF_MS = 1000


def checked_url(url: str) -> str:
    """`url` if it is HOST:PORT with a port in 1..65535; InvalidInputError saying what is wrong otherwise.

    tritonclient takes a scheme as part of the host (then retries a name that never resolves) and wraps a
    port over 65535 silently: both are refused here, at once.
    """
    if "://" in url:
        raise InvalidInputError(f"url {url!r}: give HOST:PORT without a scheme (e.g. localhost:8001)")
    host, sep, port = url.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise InvalidInputError(f"url {url!r}: expected HOST:PORT with a port from 1 to 65535")
    return url


class FluxFillClient:
    """A synchronous client for one Triton server; use as a context manager or call close().

    Args:
        url: HOST:PORT of the server's gRPC or HTTP endpoint.
        protocol: "grpc" (streamed, progress, real cancellation) or "http" (unary).
        model_name: the unary model, used over HTTP.
        stream_model_name: the decoupled model, used over gRPC.
        retry: how often and how long to retry while the server is unavailable (UNAVAILABLE only).
        keepalive: how a call finds its server gone silent (KEEPALIVE).
    """

    def __init__(
        self,
        url: str,
        protocol: Protocol = "grpc",
        model_name: str = MODEL_NAME,
        *,
        stream_model_name: str = STREAM_MODEL_NAME,
        retry: RetryPolicy | None = None,
        keepalive: Keepalive = KEEPALIVE,
    ) -> None:
        if protocol not in DEFAULT_PORTS:
            raise ValueError(f"protocol must be grpc or http, got {protocol!r}")
        self.url = checked_url(url)
        self.protocol = protocol
        self.model_name = stream_model_name if protocol == "grpc" else model_name
        self.retry = retry or RetryPolicy()
        self.keepalive = keepalive
        # Over HTTP each call opens its own client (`_http_client`): its timeout is per client, not per call.
        self._client: Any = None
        if protocol == "grpc":
            self._client = grpcclient.InferenceServerClient(url=url, channel_args=_channel_args(keepalive))
        self._checked = False

    def check_contract(self, within_s: float | None = None) -> None:
        """Raise ContractMismatchError if the served model's tensors differ from this client's contract;
        ServiceUnavailableError when the server does not answer within METADATA_TIMEOUT_S, and
        DeadlineExceededError when `within_s` (the caller's time left), if shorter, runs out first."""
        bound = METADATA_TIMEOUT_S if within_s is None else min(METADATA_TIMEOUT_S, within_s)
        try:
            with mapped_errors(self.url):
                metadata = self._metadata(bound)
        except DeadlineExceededError:
            if bound < METADATA_TIMEOUT_S:
                raise DeadlineExceededError(
                    f"deadline exceeded: {self.url} did not answer within {bound:.3g} s"
                ) from None
            # No run started, and the caller gave no shorter limit (often none): the server's fault, not a
            # time limit of theirs reached (it was "Deadline Exceeded", exit 4); another try waits as long.
            raise ServiceUnavailableError(
                f"{self.url} took the connection but did not answer within {METADATA_TIMEOUT_S:g} s "
                f"(asked for {self.model_name}'s metadata): the server is hung or overloaded"
            ) from None
        outputs = STREAM_OUTPUTS if self.protocol == "grpc" else OUTPUTS
        check_metadata(self.model_name, metadata, INPUTS, outputs)
        self._checked = True

    def _metadata(self, bound_s: float) -> Any:
        # Bounded: a hung server must not hold a call whose caller gave it a timeout, or gave none.
        if self.protocol == "grpc":
            return self._client.get_model_metadata(self.model_name, as_json=True, client_timeout=bound_s)
        with _http_client(self.url, bound_s) as bounded:
            return _answer_while_live(
                lambda: bounded.get_model_metadata(self.model_name), self.url, self.keepalive
            )

    def inpaint(
        self,
        image: ImageLike,
        mask: MaskLike,
        prompt: str = "",
        *,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int | None = None,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: CancelHandle | None = None,
    ) -> InpaintOutput:
        """Inpaint `image` where `mask` says; raises a `FluxFillError` subclass on failure.

        Args:
            image: a file path, PIL image or uint8 array (H x W x 3).
            mask: a mask file/PIL image (white or, for RGBA, transparent = repaint), a uint8 array
                (>= 128 = repaint) or a box (x, y, w, h).
            prompt: what to paint; empty means the model's default prompt.
            steps: denoising steps; None means the model's default.
            guidance: guidance scale; None means the model's default.
            seed: for a reproducible result; None means the server picks one (returned in the output).
            timeout: seconds for the whole call, retries included; the server stops the run too.
            on_progress: called with (step, total_steps) after every step (gRPC only).
            cancel: a CancelHandle whose cancel() stops the run on the server (gRPC), or stops waiting for
                it (HTTP: the server finishes the run).
        """
        if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
            # A deadline of nan never passes; one of 0 or less passed before the call.
            raise InvalidInputError(f"timeout must be a positive number of seconds, got {timeout}")
        rgb = to_rgb(image)
        try:
            arrays = contract_arrays(
                rgb,
                to_mask(mask, rgb.shape[0], rgb.shape[1]),
                prompt,
                steps=steps,
                guidance=guidance,
                seed=seed,
                timeout_s=timeout,
            )
        except ValueError as error:
            raise InvalidInputError(str(error)) from None
        deadline = None if timeout is None else time.monotonic() + timeout

        def attempt() -> InpaintOutput:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceededError(f"deadline exceeded: no result within {timeout:.3g} s")
            if cancel is not None and cancel.cancelled:
                raise CancelledError("cancelled by the caller")
            if not self._checked:
                self.check_contract(remaining)
            with mapped_errors(self.url):
                return self._call(arrays, on_progress, cancel, remaining)

        def pause(delay_s: float) -> None:
            # A wait between tries ends at the deadline or the cancel, where the next try stops at once: it
            # slept its whole backoff first (a cancel or a deadline seen up to max_delay_s late).
            if deadline is not None:
                delay_s = min(delay_s, max(deadline - time.monotonic(), 0.0))
            if cancel is not None:
                cancel.wait(delay_s)
            else:
                time.sleep(delay_s)

        return call_with_retries(attempt, self.retry, sleep=pause)

    def _call(
        self,
        arrays: dict[str, npt.NDArray[Any]],
        on_progress: ProgressCallback | None,
        cancel: CancelHandle | None,
        timeout_s: float | None,
    ) -> InpaintOutput:
        module: Any = grpcclient if self.protocol == "grpc" else httpclient
        inputs = []
        for spec in INPUTS:
            if spec.name in arrays:
                tensor = module.InferInput(spec.name, list(arrays[spec.name].shape), spec.datatype)
                tensor.set_data_from_numpy(arrays[spec.name])
                inputs.append(tensor)
        if self.protocol == "grpc":
            return stream_call(
                self._client,
                self.model_name,
                inputs,
                on_progress=on_progress,
                cancel=cancel,
                timeout_s=timeout_s,
            )
        # The grace lets the server's own deadline answer (it stopped the run at TIMEOUT_S) arrive before the
        # socket quits; no timeout, no limit on the wait (tritonclient's default of 60 s ended a longer run's
        # call with "deadline exceeded", its caller having set none, while the server went on with the run).
        with _http_client(self.url, None if timeout_s is None else timeout_s + HTTP_GRACE_S) as client:
            result = _answer_while_live(
                lambda: client.infer(self.model_name, inputs), self.url, self.keepalive, cancel
            )
        return InpaintOutput(result.as_numpy("IMAGE"), int(result.as_numpy("SEED")[0]))

    def close(self) -> None:
        """Release the connection."""
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> "FluxFillClient":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _channel_args(keepalive: Keepalive) -> list[tuple[str, int]]:
    """tritonclient's own channel arguments (no cap on a message's size), with `keepalive`."""
    timeout_ms = round(keepalive.timeout_s * 1000)
    return [
        ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", round(keepalive.interval_s * 1000)),
        ("grpc.keepalive_timeout_ms", timeout_ms),
        # A keepalive ping is not sent while another of gRPC's pings (its flow control's) is unanswered, which
        # waits this long (60 s by default) instead.
        ("grpc.http2.ping_timeout_ms", timeout_ms),
        # gRPC stops pinging after this many pings without data sent (2 by default), and a call waiting in
        # the queue sends none: 0 lifts the cap.
        ("grpc.http2.max_pings_without_data", 0),
        # While the server is away gRPC waits longer and longer between attempts to connect (1.6 times more
        # each time, up to 2 minutes), failing every call meanwhile: after a two-minute restart a client
        # could not reach the server for a minute after it was back. A second apart at most.
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
    ]


Answer = TypeVar("Answer")


def _answer_while_live(
    call: Callable[[], Answer], url: str, keepalive: Keepalive, cancel: CancelHandle | None = None
) -> Answer:
    """`call()`'s answer (or its error), given up when the server at `url` stops answering in the meantime,
    or when `cancel` is cancelled (CancelledError; the server goes on with the run, which HTTP cannot stop).

    A server frozen (SIGSTOP, a VM paused) or cut off mid-call keeps the HTTP connection open and sends
    nothing: a call given no timeout waited for good. tritonclient.http is gevent's, so the call runs in a
    greenlet of its own while this one asks the server, every `interval_s` of waiting, whether it lives.
    """
    waiting = gevent.spawn(_outcome_of, call)
    try:
        ask_at = time.monotonic() + keepalive.interval_s
        while True:
            wait_s = max(ask_at - time.monotonic(), 0.0)
            gevent.wait([waiting], timeout=min(wait_s, WAKE_S))
            if waiting.ready():
                answer, error = waiting.get()
                if error is not None:
                    raise error
                return cast(Answer, answer)
            if cancel is not None and cancel.cancelled:
                raise CancelledError(
                    "cancelled by the caller; HTTP cannot stop a started run: the server finishes it"
                )
            if time.monotonic() < ask_at:
                continue
            if not _answers(url, keepalive.timeout_s):
                raise ServiceUnavailableError(
                    f"{url}: the server stopped answering mid-call: frozen, or cut off by the network (no "
                    f"answer to GET /v2/health/live within {keepalive.timeout_s:g} s)",
                    retryable=True,
                )
            ask_at = time.monotonic() + keepalive.interval_s
    finally:
        # Its socket read ends here, before the caller closes the client under it.
        waiting.kill(block=True, timeout=1.0)


def _outcome_of(call: Callable[[], Answer]) -> tuple[Answer | None, Exception | None]:
    """`call()`'s answer, or its error to raise in the caller's greenlet: gevent prints the traceback of an
    error raised in a greenlet of its own (on the `fluxfill` command's stderr, before its one line)."""
    try:
        return call(), None
    except Exception as error:
        return None, error


def _answers(url: str, within_s: float) -> bool:
    """Whether the server at `url` answers a liveness request within `within_s`: any answer counts (the
    question is whether it is there, not what it says)."""
    try:
        with _http_client(url, within_s) as probe:
            probe.is_server_live()
    except OSError:  # refused, unreachable, or no answer in time (TimeoutError)
        return False
    return True


def _http_client(url: str, network_timeout_s: float | None) -> Any:
    """A tritonclient HTTP client whose socket waits `network_timeout_s` for each answer, or without limit
    (None); tritonclient.http takes its network timeout per client, not per call."""
    _quiet_interrupts(gevent.get_hub())
    return httpclient.InferenceServerClient(url=url, network_timeout=network_timeout_s)


def _quiet_interrupts(hub: Any) -> None:
    """A Ctrl-C while this thread's gevent hub waits on a socket reaches the caller as KeyboardInterrupt all
    the same; the hub also printed it to stderr, with a timestamp: two stray lines before the `fluxfill`
    command's own one. Only the printing is left out (the hub still hands the interrupt on)."""
    if KeyboardInterrupt not in hub.NOT_ERROR:
        hub.NOT_ERROR = (*hub.NOT_ERROR, KeyboardInterrupt)
