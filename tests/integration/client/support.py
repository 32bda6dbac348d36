"""Helpers for the client tests: photos, masks, and a request's queue time from Triton's statistics (the
model's outcome counters: tests.integration.server_metrics)."""

import numpy as np
import tritonclient.grpc as grpcclient

from fluxfill.client.inference import FluxFillClient
from fluxfill.client.local_server import LocalTritonServer
from fluxfill.inpaint.contract import STREAM_MODEL_NAME

# With LONG_RUN_PARAMETERS (every crop denoised at 768x768) a step takes 20-40 ms: a LONG_RUN_STEPS run
# keeps the single model instance busy for 20 s or more, and a job's 100 steps for about 2 s (the window
# in which the job tests cancel it).
LONG_RUN_STEPS = 1000
# What a request after a stopped long run may wait in Triton's queue: a free instance takes it within a
# millisecond (0.1 ms measured), one still busy with the run only after the 20+ s the run had left. Timed by
# Triton, not by the test's clock: a loaded machine slows the request's whole round trip (a follow-up once
# took 8.2 s end to end while other tests shared the two cores), not its wait for a free instance.
FOLLOW_UP_QUEUE_LIMIT_S = 5.0
LONG_RUN_PARAMETERS = {
    "max_steps": str(LONG_RUN_STEPS),
    "min_working_pixels": "589824",
    "max_working_pixels": "589824",
}


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A random RGB photo."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def box_mask(height: int, width: int) -> np.ndarray:
    """A mask repainting the middle half of the photo."""
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 255
    return mask


def queued_s(server: LocalTritonServer) -> float:
    """Seconds that requests to flux_fill_stream have waited in Triton's queue, all together so far."""
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        statistics = client.get_inference_statistics(STREAM_MODEL_NAME, as_json=True)
    waits = (int(model["inference_stats"]["queue"].get("ns", 0)) for model in statistics["model_stats"])
    return sum(waits) / 1e9


def follow_up_queued_s(server: LocalTritonServer) -> float:
    """How long a 2-step request, sent now and answered, waited in Triton's queue for the model instance."""
    before = queued_s(server)
    with FluxFillClient(server.grpc_url) as client:
        client.inpaint(photo(32, 32), box_mask(32, 32), "x", steps=2)
    return queued_s(server) - before
