"""Streaming, cancellation, time limits, queue policy, metrics and the prompt cache on a real tritonserver."""

import queue
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from fluxfill.client.inference import FluxFillClient, contract_arrays
from fluxfill.client.local_server import LocalTritonServer
from fluxfill.inpaint.contract import INPUTS, MODEL_NAME, PRIORITY_URGENT, STREAM_MODEL_NAME
from tests.integration.server_metrics import outcome_count, server_metric, wait_until_settled

pytestmark = pytest.mark.integration

# A run long enough to interrupt on any machine: many steps at the largest working size of the test server.
LONG_STEPS = 100


def grpc_inputs(image: np.ndarray, mask: np.ndarray, prompt: str = "a cat", **optional: Any) -> list[Any]:
    arrays = contract_arrays(image, mask, prompt, **optional)
    types = {spec.name: spec.datatype for spec in INPUTS}
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), types[name])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def scene(size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    image = np.random.default_rng(size).integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
    return image, mask


class Stream:
    """A gRPC stream to flux_fill_stream whose responses land in a queue."""

    def __init__(self, server: LocalTritonServer) -> None:
        self.client = grpcclient.InferenceServerClient(server.grpc_url)
        self.responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.responses.put((result, error)))

    def send(self, inputs: list[Any]) -> None:
        self.client.async_stream_infer(STREAM_MODEL_NAME, inputs)

    def next(self, timeout: float = 60.0) -> tuple[Any, Any]:
        return self.responses.get(timeout=timeout)

    def until_final(self) -> Iterator[tuple[Any, Any]]:
        while True:
            result, error = self.next()
            yield result, error
            if error is not None or result.as_numpy("IMAGE") is not None:
                return


def wait_for_steps_beyond(server: LocalTritonServer, count: float) -> None:
    """Block until a run has finished a step, i.e. it is executing now."""
    deadline = time.monotonic() + 30
    while server_metric(server, "fluxfill_step_duration_seconds_count") <= count:
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.02)


def test_stream_sends_one_response_per_step_in_order_then_the_unary_image(
    flux_server: LocalTritonServer,
) -> None:
    image, mask = scene(128)
    stream = Stream(flux_server)
    stream.send(grpc_inputs(image, mask, steps=4, seed=77))
    responses = list(stream.until_final())
    stream.client.stop_stream()
    assert all(error is None for _, error in responses)
    steps = [(int(r.as_numpy("STEP")[0]), int(r.as_numpy("TOTAL_STEPS")[0])) for r, _ in responses]
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4), (4, 4)]
    assert all(r.as_numpy("IMAGE") is None for r, _ in responses[:-1])
    final = responses[-1][0]
    with FluxFillClient(flux_server.http_url, "http") as client:
        unary = client.inpaint(image, mask, "a cat", steps=4, seed=77)
    assert np.array_equal(final.as_numpy("IMAGE"), unary.image)
    assert int(final.as_numpy("SEED")[0]) == unary.seed == 77


def test_cancelling_a_stream_stops_within_a_step_and_frees_the_model(flux_server: LocalTritonServer) -> None:
    wait_until_settled(flux_server)  # an earlier test's run answered late would move the counts below
    cancelled_before = outcome_count(flux_server, "cancelled")
    steps_before = server_metric(flux_server, "fluxfill_step_duration_seconds_count")
    image, mask = scene(256)
    stream = Stream(flux_server)
    stream.send(grpc_inputs(image, mask, steps=LONG_STEPS, seed=1))
    first, error = stream.next()
    assert error is None
    assert int(first.as_numpy("STEP")[0]) == 1
    assert server_metric(flux_server, "fluxfill_requests_in_progress") == 1
    started = time.monotonic()
    stream.client.stop_stream(cancel_requests=True)
    with FluxFillClient(flux_server.grpc_url, "grpc") as client:
        client.inpaint(*scene(64), "next", steps=1, seed=2)
    assert time.monotonic() - started < 10, "the next request waited for the cancelled run"
    assert outcome_count(flux_server, "cancelled") == cancelled_before + 1
    computed = server_metric(flux_server, "fluxfill_step_duration_seconds_count") - steps_before
    assert computed < LONG_STEPS / 2, f"{computed} steps computed after cancelling a {LONG_STEPS}-step run"
    wait_until_settled(flux_server, timeout_s=10)  # both answered: the gauge is back at 0


def test_cancelling_a_unary_grpc_call_stops_the_forwarded_run(flux_server: LocalTritonServer) -> None:
    wait_until_settled(flux_server)
    cancelled_before = outcome_count(flux_server, "cancelled")
    steps_before = server_metric(flux_server, "fluxfill_step_duration_seconds_count")
    client = grpcclient.InferenceServerClient(flux_server.grpc_url)
    done: queue.Queue[Any] = queue.Queue()
    context = client.async_infer(
        MODEL_NAME,
        grpc_inputs(*scene(256), steps=LONG_STEPS, seed=3),
        callback=lambda result, error: done.put((result, error)),
    )
    wait_for_steps_beyond(flux_server, steps_before)
    context.cancel()
    _, error = done.get(timeout=30)
    assert error is not None
    deadline = time.monotonic() + 30
    while outcome_count(flux_server, "cancelled") == cancelled_before:
        assert time.monotonic() < deadline, "the inner run was not cancelled"
        time.sleep(0.05)
    computed = server_metric(flux_server, "fluxfill_step_duration_seconds_count") - steps_before
    assert computed < LONG_STEPS / 2


@pytest.mark.parametrize("model", [MODEL_NAME, STREAM_MODEL_NAME])
def test_time_limit_stops_a_long_run_with_a_deadline_error(
    flux_server: LocalTritonServer, model: str
) -> None:
    wait_until_settled(flux_server)
    timeouts_before = outcome_count(flux_server, "timeout")
    inputs = grpc_inputs(*scene(256), steps=LONG_STEPS, seed=4, timeout_s=0.3)
    started = time.monotonic()
    if model == MODEL_NAME:
        with pytest.raises(InferenceServerException) as caught:
            grpcclient.InferenceServerClient(flux_server.grpc_url).infer(model, inputs)
        error = caught.value
    else:
        stream = Stream(flux_server)
        stream.send(inputs)
        error = next(e for _, e in stream.until_final() if e is not None)
        stream.client.stop_stream()
    assert time.monotonic() - started < 15
    # Stream errors carry no status in tritonclient: the message prefix is what identifies a deadline.
    assert error.status() == ("StatusCode.UNAVAILABLE" if model == MODEL_NAME else None)
    assert error.message().startswith("deadline exceeded: stopped after step")
    assert "exceeds the limit of 0.3 s" in error.message()
    assert outcome_count(flux_server, "timeout") == timeouts_before + 1


def test_full_queue_refuses_excess_quickly_and_urgent_overtakes_bulk(flux_server: LocalTritonServer) -> None:
    # The scenario needs the blocker to run until all twelve are queued; on a loaded machine its run may end
    # first (seen under four test workers on two cores), so a round whose premise did not hold is run again.
    for round_ in range(3):
        results, queued_at = _blocker_then_twelve_queued(flux_server, round_)
        if results["blocker"][0] > queued_at:
            break
    else:
        pytest.fail("the blocker's 100-step run ended before twelve requests were queued, three times")
    refused = {tag: error for tag, (_, error) in results.items() if error is not None}
    assert len(refused) >= 3, refused
    assert all("Exceeds maximum queue size" in error.message() for error in refused.values())
    assert all(error.status() == "StatusCode.UNAVAILABLE" for error in refused.values())
    order = [tag for tag, (_, error) in sorted(results.items(), key=lambda r: r[1][0]) if error is None]
    assert order[0] == "blocker"
    assert order[1] == "urgent", order


def _blocker_then_twelve_queued(
    server: LocalTritonServer, round_: int
) -> tuple[dict[str, tuple[float, Any]], float]:
    """Each request's (finish time, error) once all have finished, and when the last was queued."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    finished: queue.Queue[tuple[str, float, Any]] = queue.Queue()

    def on_done(tag: str, result: Any, error: Any) -> None:
        finished.put((tag, time.monotonic(), error))

    def submit(tag: str, steps: int, priority: int = 0, size: int = 64) -> None:
        client.async_infer(
            MODEL_NAME,
            grpc_inputs(*scene(size), steps=steps, seed=5 + round_),
            callback=partial(on_done, tag),
            priority=priority,
        )

    wait_until_settled(server)  # a step of another run would be taken for the blocker's
    steps_before = server_metric(server, "fluxfill_step_duration_seconds_count")
    submit("blocker", LONG_STEPS, size=256)
    wait_for_steps_beyond(server, steps_before)
    # The blocker is executing: everything below waits in flux_fill's queue (max 8).
    for index in range(8):
        submit(f"bulk{index}", 1)
    submit("urgent", 1, priority=PRIORITY_URGENT)
    for index in range(3):
        submit(f"excess{index}", 1)
    queued_at = time.monotonic()
    results = [finished.get(timeout=120) for _ in range(13)]
    client.close()
    return {tag: (at, error) for tag, at, error in results}, queued_at


def test_repeated_prompt_hits_the_cache_with_identical_output(flux_server: LocalTritonServer) -> None:
    wait_until_settled(flux_server)
    hits, misses = (
        server_metric(flux_server, "fluxfill_prompt_cache_requests_total", result=r) for r in ("hit", "miss")
    )
    prompt = f"a unique prompt {time.monotonic_ns()}"
    with FluxFillClient(flux_server.grpc_url, "grpc") as client:
        first = client.inpaint(*scene(96), prompt, steps=2, seed=8).image
        second = client.inpaint(*scene(96), prompt, steps=2, seed=8).image
    assert np.array_equal(first, second)
    assert server_metric(flux_server, "fluxfill_prompt_cache_requests_total", result="miss") == misses + 1
    assert server_metric(flux_server, "fluxfill_prompt_cache_requests_total", result="hit") == hits + 1


def test_metrics_count_each_outcome(flux_server: LocalTritonServer) -> None:
    names = ("success", "invalid", "cancelled", "timeout", "error")
    wait_until_settled(flux_server)
    before = {name: outcome_count(flux_server, name) for name in names}
    with FluxFillClient(flux_server.grpc_url, "grpc") as client:
        client.inpaint(*scene(64), "ok", steps=1, seed=1)
        client.inpaint(*scene(64), "ok", steps=1, seed=2)
        image, _ = scene(64)
        client.inpaint(image, np.zeros((64, 64), np.uint8), "empty mask is a success", seed=3)
        with pytest.raises(Exception, match="MASK"):
            client.inpaint(image, np.zeros((8, 8), np.uint8), "bad mask")
    after = {name: outcome_count(flux_server, name) for name in names}
    assert {k: after[k] - before[k] for k in names} == {
        "success": 3,
        "invalid": 1,
        "cancelled": 0,
        "timeout": 0,
        "error": 0,
    }
    assert server_metric(flux_server, "fluxfill_model_load_seconds") > 0
    assert server_metric(flux_server, "fluxfill_model_info", device="cpu", offload="none") == 1
    assert server_metric(flux_server, "fluxfill_denoised_pixel_ratio_count") > 0
    assert server_metric(flux_server, "fluxfill_phase_duration_seconds_count", phase="preprocess") > 0


def test_model_is_ready_only_after_its_warm_up(flux_server: LocalTritonServer) -> None:
    log = flux_server.log_text()
    assert "warm-up at" in log
    assert log.index("warm-up at") < log.index("flux_fill ready on")


def test_previews_ride_on_every_nth_progress_response(start_flux_server: Any) -> None:
    server = start_flux_server(preview_every="2", preview_max_side="64", warmup_steps="0")
    stream = Stream(server)
    stream.send(grpc_inputs(*scene(256), steps=5, seed=6))
    responses = [result for result, error in stream.until_final() if error is None]
    stream.client.stop_stream()
    shapes = {int(r.as_numpy("STEP")[0]): r.as_numpy("PREVIEW") for r in responses[:-1]}
    assert [step for step, preview in shapes.items() if preview is not None] == [2, 4]
    preview = shapes[2]
    assert preview is not None
    assert preview.dtype == np.uint8
    assert max(preview.shape[:2]) <= 64
    assert preview.shape[2] == 3
    # Unary callers do not ask for previews, so none are decoded for them; the image is unchanged.
    with FluxFillClient(server.grpc_url, "grpc") as client:
        assert client.inpaint(*scene(64), "x", steps=2, seed=1).image.shape == (64, 64, 3)
