"""Helpers for the client tests: photos, masks and the model's outcome counters from /metrics."""

import re
import urllib.request

import numpy as np

from fluxfill.client.local_server import LocalTritonServer

# With LONG_RUN_PARAMETERS (every crop denoised at 768x768) a step takes 20-40 ms: a LONG_RUN_STEPS run
# keeps the single model instance busy for 20 s or more, and a job's 100 steps for about 2 s (the window
# in which the job tests cancel it).
LONG_RUN_STEPS = 1000
# A 2-step request after a stopped long run must be answered within this: well below the 20+ s the long
# run had left, and over ten times the ~0.6 s it takes, so other work on a shared machine cannot fail it.
FOLLOW_UP_LIMIT_S = 8.0
LONG_RUN_PARAMETERS = {
    "max_steps": str(LONG_RUN_STEPS),
    "min_working_pixels": "589824",
    "max_working_pixels": "589824",
}


def outcome_count(server: LocalTritonServer, outcome: str) -> float:
    """fluxfill_requests_total for one outcome, summed over models, as /metrics reports it now."""
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:  # noqa: S310 (local test server)
        text = response.read().decode()
    pattern = rf'^fluxfill_requests_total\{{[^}}]*outcome="{outcome}"[^}}]*\}} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, text, flags=re.MULTILINE))


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A random RGB photo."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def box_mask(height: int, width: int) -> np.ndarray:
    """A mask repainting the middle half of the photo."""
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 255
    return mask
