"""The Python client on a real tritonserver: inputs in every form, progress, cancel, timeout, contract."""

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fluxfill.client import inference
from fluxfill.client.errors import (
    CancelledError,
    ContractMismatchError,
    DeadlineExceededError,
    InvalidInputError,
    ServiceUnavailableError,
)
from fluxfill.client.inference import (
    HTTP_GRACE_S,
    METADATA_TIMEOUT_S,
    CancelHandle,
    FluxFillClient,
    Keepalive,
    Protocol,
)
from fluxfill.client.local_server import LocalTritonServer
from fluxfill.client.retry import NO_RETRY, RetryPolicy
from fluxfill.client.triton_binary import free_port
from fluxfill.inpaint.contract import MODEL_NAME, STREAM_MODEL_NAME
from tests.integration.bridge.harness import TcpProxy
from tests.integration.client.support import (
    FOLLOW_UP_QUEUE_LIMIT_S,
    LONG_RUN_STEPS,
    box_mask,
    follow_up_queued_s,
    photo,
)
from tests.integration.server_metrics import outcome_count, wait_until_settled

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def grpc(flux_server: LocalTritonServer) -> Iterator[FluxFillClient]:
    with FluxFillClient(flux_server.grpc_url, "grpc") as client:
        yield client


@pytest.fixture(scope="module")
def http(flux_server: LocalTritonServer) -> Iterator[FluxFillClient]:
    with FluxFillClient(flux_server.http_url, "http") as client:
        yield client


def test_progress_is_reported_once_per_step_in_order(grpc: FluxFillClient) -> None:
    seen: list[tuple[int, int]] = []
    result = grpc.inpaint(photo(48, 64), box_mask(48, 64), "x", steps=5, seed=1, on_progress=_append(seen))
    assert seen == [(step, 5) for step in range(1, 6)]
    assert result.image.shape == (48, 64, 3)
    assert result.seed == 1


def test_paths_pil_images_and_arrays_give_the_same_result(grpc: FluxFillClient, tmp_path: Path) -> None:
    image, mask = photo(40, 56, seed=3), box_mask(40, 56)
    Image.fromarray(image).save(tmp_path / "photo.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    from_arrays = grpc.inpaint(image, mask, "x", seed=7).image
    from_paths = grpc.inpaint(tmp_path / "photo.png", str(tmp_path / "mask.png"), "x", seed=7).image
    from_pil = grpc.inpaint(Image.fromarray(image), Image.fromarray(mask).convert("RGB"), "x", seed=7).image
    assert np.array_equal(from_arrays, from_paths)
    assert np.array_equal(from_arrays, from_pil)


def test_box_and_transparent_area_masks_repaint_the_same_pixels(grpc: FluxFillClient) -> None:
    image = photo(40, 40, seed=4)
    rgba = Image.fromarray(image).convert("RGBA")
    alpha = np.full((40, 40), 255, np.uint8)
    alpha[10:30, 5:25] = 0
    rgba.putalpha(Image.fromarray(alpha))
    by_box = grpc.inpaint(image, (5, 10, 20, 20), "x", seed=2).image
    by_alpha = grpc.inpaint(image, rgba, "x", seed=2).image
    assert np.array_equal(by_box, by_alpha)
    assert not np.array_equal(by_box[10:30, 5:25], image[10:30, 5:25])


def test_grpc_stream_and_http_unary_agree_bitwise(grpc: FluxFillClient, http: FluxFillClient) -> None:
    image, mask = photo(32, 48, seed=5), box_mask(32, 48)
    assert np.array_equal(
        grpc.inpaint(image, mask, "a hat", steps=3, seed=9).image,
        http.inpaint(image, mask, "a hat", steps=3, seed=9).image,
    )


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_server_side_refusal_is_invalid_input_with_the_servers_message(
    flux_server: LocalTritonServer, protocol: Protocol
) -> None:
    url = flux_server.grpc_url if protocol == "grpc" else flux_server.http_url
    with FluxFillClient(url, protocol) as client, pytest.raises(InvalidInputError, match="STEPS: must be"):
        client.inpaint(photo(16, 16), box_mask(16, 16), "x", steps=0)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_timeout_longer_than_a_day_is_no_error(flux_server: LocalTritonServer, protocol: Protocol) -> None:
    """It was sent as TIMEOUT_S, which the model refuses above a day: the call failed as invalid input."""
    url = flux_server.grpc_url if protocol == "grpc" else flux_server.http_url
    with FluxFillClient(url, protocol) as client:
        output = client.inpaint(photo(16, 16), box_mask(16, 16), "x", steps=1, timeout=1e6)
    assert output.image.shape == (16, 16, 3)


def test_cancel_handle_stops_the_run_on_the_server(long_run_server: LocalTritonServer) -> None:
    wait_until_settled(long_run_server)
    cancelled_before = outcome_count(long_run_server, "cancelled")
    handle = CancelHandle()
    steps: list[tuple[int, int]] = []

    def progress(step: int, total: int) -> None:
        steps.append((step, total))
        if step == 3:
            threading.Thread(target=handle.cancel).start()

    with FluxFillClient(long_run_server.grpc_url) as client:
        with pytest.raises(CancelledError):
            client.inpaint(
                photo(32, 32),
                box_mask(32, 32),
                "x",
                steps=LONG_RUN_STEPS,
                on_progress=progress,
                cancel=handle,
            )
        assert steps[-1][0] < 100, "the client must stop waiting within a few steps"
        # The model counts the outcome only once its run loop has stopped.
        _wait_for(lambda: outcome_count(long_run_server, "cancelled") == cancelled_before + 1)
    # The cancelled run had ~990 steps (20+ s) left: the next request finds the single instance free.
    waited = follow_up_queued_s(long_run_server)
    assert waited < FOLLOW_UP_QUEUE_LIMIT_S, f"the next request waited {waited:.1f} s behind the run"


def test_timeout_raises_deadline_exceeded_and_frees_the_server(long_run_server: LocalTritonServer) -> None:
    wait_until_settled(long_run_server)
    stopped_before = outcome_count(long_run_server, "cancelled") + outcome_count(long_run_server, "timeout")
    with FluxFillClient(long_run_server.grpc_url) as client:
        with pytest.raises(DeadlineExceededError, match="deadline exceeded"):
            client.inpaint(photo(32, 32), box_mask(32, 32), "x", steps=LONG_RUN_STEPS, timeout=0.5)
        # The run stopped on the server (cancelled by the client, or at its TIMEOUT_S), not after its ~1,000
        # steps: a condition, not a stopwatch, so a busy machine cannot fail it.
        _wait_for(
            lambda: (
                outcome_count(long_run_server, "cancelled") + outcome_count(long_run_server, "timeout")
                == stopped_before + 1
            ),
            timeout_s=60,
        )
    waited = follow_up_queued_s(long_run_server)
    assert waited < FOLLOW_UP_QUEUE_LIMIT_S, f"the next request waited {waited:.1f} s behind the run"


def test_http_timeout_is_deadline_exceeded(long_run_server: LocalTritonServer) -> None:
    # HTTP cannot cancel: the TIMEOUT_S the client sends is what stops the run on the server.
    with FluxFillClient(long_run_server.http_url, "http") as client:
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError, match="deadline exceeded"):
            client.inpaint(photo(32, 32), box_mask(32, 32), "x", steps=LONG_RUN_STEPS, timeout=1.0)
        assert time.monotonic() - started < 3  # the 1 s limit, the 1 s grace, and slack


def test_an_http_call_without_a_timeout_waits_as_long_as_the_server_works(
    flux_server: LocalTritonServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tritonclient.http's socket gives up after 60 s unless told otherwise: a run longer than that, with its
    wait in the queue, ended with "deadline exceeded" though its caller set no timeout, the server going on
    with it (seen against a server answering after 63 s). Now such a call's socket waits without limit, one
    given a timeout waits that and the grace, and the contract check its own bound."""
    asked: list[float | None] = []
    opened = inference._http_client

    def recorded(url: str, network_timeout_s: float | None) -> object:
        asked.append(network_timeout_s)
        return opened(url, network_timeout_s)

    monkeypatch.setattr(inference, "_http_client", recorded)
    with FluxFillClient(flux_server.http_url, "http") as client:
        client.inpaint(photo(32, 32), box_mask(32, 32), "x", steps=1)
        client.inpaint(photo(32, 32), box_mask(32, 32), "x", steps=1, timeout=20.0)
    # The timed call's socket waits what is left of its 20 s when it starts, and the grace.
    assert asked[:2] == [METADATA_TIMEOUT_S, None]
    assert asked[2] is not None
    assert 20.0 + HTTP_GRACE_S - 1 < asked[2] <= 20.0 + HTTP_GRACE_S


def test_a_grpc_call_without_a_timeout_ends_when_its_server_goes_silent(
    long_run_server: LocalTritonServer,
) -> None:
    """A server frozen or cut off mid-run (here a proxy that stops passing bytes, as a SIGSTOPped server or
    a network partition does: the connection stays open, nothing answers) held a call given no timeout for
    good. Its keepalive pings go unanswered: ServiceUnavailableError, and the server, once the connection
    closes, stops the run."""
    wait_until_settled(long_run_server)
    stopped_before = outcome_count(long_run_server, "cancelled")
    proxy = TcpProxy(long_run_server.grpc_port)
    proxy.up()
    try:
        # Triton closes a connection pinged a few times with no data sent between ("Too many pings"): 3 s
        # apart, the run's first step (its first data) has about 9 s to come, as a loaded machine may need
        # (0.5 s apart, it came too late once, with three test workers on two cores).
        quick = Keepalive(interval_s=3.0, timeout_s=1.0)
        with FluxFillClient(proxy.url, retry=NO_RETRY, keepalive=quick) as client:
            client.check_contract()
            started = time.monotonic()
            with pytest.raises(ServiceUnavailableError, match="stopped answering mid-call"):
                client.inpaint(
                    photo(32, 32),
                    box_mask(32, 32),
                    "x",
                    steps=LONG_RUN_STEPS,
                    on_progress=lambda step, _total: proxy.freeze() if step == 3 else None,
                )
            waited = time.monotonic() - started
    finally:
        proxy.thaw()
        proxy.down()
    assert waited < 15, f"the call took {waited:.1f} s to give up on a silent server"
    _wait_for(lambda: outcome_count(long_run_server, "cancelled") == stopped_before + 1, timeout_s=30)


def test_an_http_call_without_a_timeout_ends_when_its_server_goes_silent(
    flux_server: LocalTritonServer,
) -> None:
    """The same over HTTP, which has no pings: the call waited for good on a frozen server. Now, every
    keepalive interval without its answer, it asks the server whether it lives (on a connection of its own,
    through the same frozen proxy here): unanswered, ServiceUnavailableError."""
    proxy = TcpProxy(flux_server.http_port)
    proxy.up()
    try:
        quick = Keepalive(interval_s=0.5, timeout_s=1.0)
        with FluxFillClient(proxy.url, "http", retry=NO_RETRY, keepalive=quick) as client:
            client.check_contract()
            proxy.freeze()  # the call's connection is taken, and nothing passes either way
            started = time.monotonic()
            with pytest.raises(ServiceUnavailableError, match="stopped answering mid-call") as raised:
                client.inpaint(photo(32, 32), box_mask(32, 32), "x")
            waited = time.monotonic() - started
    finally:
        proxy.thaw()
        proxy.down()
    assert raised.value.retryable
    assert waited < 15, f"the call took {waited:.1f} s to give up on a silent server"


def test_an_http_call_cancelled_while_it_waits_stops_waiting_at_once(
    long_run_server: LocalTritonServer,
) -> None:
    """Triton cannot stop an HTTP request, and the call waited for the whole run after its cancel (the handle
    was looked at only before sending). Now it stops waiting within a poll, saying the server finishes it."""
    wait_until_settled(long_run_server)
    finished_before = outcome_count(long_run_server, "success")
    cancel = CancelHandle()
    with FluxFillClient(long_run_server.http_url, "http", retry=NO_RETRY) as client:
        client.check_contract()
        threading.Timer(0.2, cancel.cancel).start()
        with pytest.raises(CancelledError, match="HTTP cannot stop a started run: the server finishes it"):
            client.inpaint(photo(32, 32), box_mask(32, 32), "x", steps=50, cancel=cancel)
        unfinished = outcome_count(long_run_server, "success") == finished_before
    # 50 steps of 20-40 ms: the run, not yet finished when the call stopped waiting, finishes on the server.
    assert unfinished, "the call waited for the run to finish"
    _wait_for(lambda: outcome_count(long_run_server, "success") == finished_before + 1, timeout_s=30)


def test_an_http_call_outlasting_its_keepalive_interval_gets_its_answer(
    long_run_server: LocalTritonServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that answers its liveness checks keeps the call: a run checked several times returns the image
    a call never checked returns. The run is long enough for several of the call's polls (10 a second) on
    any machine: 40 steps at the long-run server's working size, 20-40 ms each (on the quick server's, 100
    steps once ended in CI before the call's second poll)."""
    answered: list[bool] = []
    asked = inference._answers

    def counted(url: str, within_s: float) -> bool:
        answered.append(asked(url, within_s))
        return answered[-1]

    monkeypatch.setattr(inference, "_answers", counted)
    quick = Keepalive(interval_s=0.01, timeout_s=1.0)
    with FluxFillClient(long_run_server.http_url, "http", retry=NO_RETRY, keepalive=quick) as checked:
        result = checked.inpaint(photo(32, 32), box_mask(32, 32), "x", steps=40, seed=3)
    monkeypatch.undo()
    with FluxFillClient(long_run_server.http_url, "http", retry=NO_RETRY) as unchecked:
        expected = unchecked.inpaint(photo(32, 32), box_mask(32, 32), "x", steps=40, seed=3)
    assert len(answered) >= 2, "the run ended before its call asked twice whether the server lives"
    assert all(answered)
    assert result.seed == 3
    assert np.array_equal(result.image, expected.image)


@pytest.mark.parametrize(
    ("protocol", "unary", "stream", "problem"),
    [
        # The unary contract read against the streaming model: the server has two outputs more.
        (
            "http",
            STREAM_MODEL_NAME,
            STREAM_MODEL_NAME,
            "output STEP exists on the server but not in this client",
        ),
        # The streaming contract read against the unary model: the progress outputs are missing.
        ("grpc", MODEL_NAME, MODEL_NAME, "output STEP is missing on the server"),
    ],
)
def test_a_server_model_that_differs_from_the_contract_is_named_clearly(
    flux_server: LocalTritonServer, protocol: Protocol, unary: str, stream: str, problem: str
) -> None:
    url = flux_server.grpc_url if protocol == "grpc" else flux_server.http_url
    client = FluxFillClient(url, protocol, unary, stream_model_name=stream)
    with client, pytest.raises(ContractMismatchError, match="does not match this client's tensor") as caught:
        client.inpaint(photo(16, 16), box_mask(16, 16), "x")
    assert problem in str(caught.value)


def test_a_full_queue_is_retried_with_backoff_until_it_drains(long_run_server: LocalTritonServer) -> None:
    # One run executing and max_queue_size (8) waiting: the server refuses the next request at once.
    handles = [CancelHandle() for _ in range(9)]
    flood = [threading.Thread(target=_run_until_cancelled, args=(long_run_server, h)) for h in handles]
    for thread in flood:
        thread.start()
    try:
        with FluxFillClient(long_run_server.grpc_url, retry=NO_RETRY) as impatient:
            _wait_for(lambda: _refusal(impatient) is not None, timeout_s=30)
            refusal = _refusal(impatient)
        assert refusal is not None
        assert refusal.retryable
        assert "Exceeds maximum queue size" in str(refusal)
        threading.Timer(1.0, lambda: [h.cancel() for h in handles]).start()
        started = time.monotonic()
        patient = FluxFillClient(long_run_server.grpc_url, retry=RetryPolicy(retries=6, first_delay_s=0.25))
        with patient:
            result = patient.inpaint(photo(32, 32), box_mask(32, 32), "x", steps=2)
        assert result.image.shape == (32, 32, 3)
        assert time.monotonic() - started >= 0.75, "the first two tries must have been refused"
    finally:
        for handle in handles:
            handle.cancel()
        for thread in flood:
            thread.join(timeout=30)


def _run_until_cancelled(server: LocalTritonServer, handle: CancelHandle) -> None:
    # Some of the flood may itself be refused as the queue fills: that is fine, it only has to fill it.
    with (
        FluxFillClient(server.grpc_url, retry=NO_RETRY) as client,
        suppress(CancelledError, ServiceUnavailableError),
    ):
        client.inpaint(photo(32, 32), box_mask(32, 32), "x", steps=LONG_RUN_STEPS, cancel=handle)


def _refusal(client: FluxFillClient) -> ServiceUnavailableError | None:
    try:
        client.inpaint(photo(16, 16), box_mask(16, 16), "x", steps=1, timeout=0.5)
    except ServiceUnavailableError as error:
        return error
    except DeadlineExceededError:
        return None  # queued behind the flood: not full yet
    return None


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_no_server_is_unavailable_naming_the_address(protocol: Protocol) -> None:
    url = f"127.0.0.1:{free_port()}"
    client = FluxFillClient(url, protocol, retry=NO_RETRY)
    with client, pytest.raises(ServiceUnavailableError, match=url) as caught:
        client.inpaint(photo(16, 16), box_mask(16, 16), "x")
    assert caught.value.retryable


def test_a_client_whose_server_is_away_tries_it_again_about_every_second() -> None:
    """gRPC waits longer and longer between its attempts to connect while a server is away (1 s, then 1.6
    times that each time, up to 2 minutes), and a call meanwhile fails at once: a client whose server was away
    for two minutes (a model's restart) failed every call for 58 s after the server was back. Its attempts are
    a second apart at most: counted here on a port that takes each connection and closes it at once."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    attempts = 0
    stop = threading.Event()

    def take_and_close() -> None:
        nonlocal attempts
        while not stop.is_set():
            with suppress(TimeoutError):
                listener.accept()[0].close()
                attempts += 1

    taker = threading.Thread(target=take_and_close, daemon=True)
    taker.start()
    try:
        url = f"127.0.0.1:{listener.getsockname()[1]}"
        with FluxFillClient(url, "grpc", retry=NO_RETRY) as client:
            calls_end = time.monotonic() + 12.0
            while time.monotonic() < calls_end:
                with pytest.raises(ServiceUnavailableError):
                    client.check_contract()
                time.sleep(0.1)
    finally:
        stop.set()
        taker.join()
        listener.close()
    # gRPC's own backoff: at most 6 attempts in 12 s (at 0, 1, 2.6, 5.2 and 9.3 s, each wait +-20 %); a
    # second apart at most: 11 or more.
    assert attempts >= 9, attempts


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unknown_model_is_unavailable_and_not_retried(
    flux_server: LocalTritonServer, protocol: Protocol
) -> None:
    url = flux_server.grpc_url if protocol == "grpc" else flux_server.http_url
    with FluxFillClient(url, protocol, "no_such_model", stream_model_name="no_such_model") as client:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailableError, match="no_such_model") as caught:
            client.inpaint(photo(16, 16), box_mask(16, 16), "x")
    assert not caught.value.retryable
    assert time.monotonic() - started < 0.5, "a missing model must fail at once, without backoff"


def _append(seen: list[tuple[int, int]]) -> Callable[[int, int], None]:
    return lambda step, total: seen.append((step, total))


def _wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
