"""The model's own Prometheus metrics, beside Triton's nv_* families on the same /metrics endpoint.

The metric API (`MetricFamily`) is injected: triton_python_backend_utils in the server, a stub in unit tests.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fluxfill.inpaint.errors import CancelledError, DeadlineExceededError, InvalidInputError
from fluxfill.inpaint.prompt_cache import CacheStats

OUTCOMES = ("success", "invalid", "cancelled", "timeout", "error")
STEP_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
RUN_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0]
PHASE_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
RATIO_BUCKETS = [0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0]


def outcome_of(error: BaseException) -> str:
    """The outcome label a failed request is counted under."""
    if isinstance(error, InvalidInputError):
        return "invalid"
    if isinstance(error, CancelledError):
        return "cancelled"
    if isinstance(error, DeadlineExceededError):
        return "timeout"
    return "error"


@dataclass(frozen=True)
class FamilySpec:
    """One metric family as /metrics shows it; docs/model.md's metrics table is generated from these."""

    name: str
    kind: str
    labels: tuple[str, ...]
    description: str


FAMILIES: dict[str, FamilySpec] = {
    "requests": FamilySpec("fluxfill_requests_total", "counter", ("outcome",), "requests by outcome"),
    "in_progress": FamilySpec(
        "fluxfill_requests_in_progress",
        "gauge",
        (),
        "requests taken from Triton's queue and not yet answered (Triton's pending count leaves them out)",
    ),
    "step": FamilySpec("fluxfill_step_duration_seconds", "histogram", (), "one denoising step, as it ends"),
    "denoise": FamilySpec(
        "fluxfill_denoise_duration_seconds", "histogram", (), "all denoising steps of a run"
    ),
    "phase": FamilySpec(
        "fluxfill_phase_duration_seconds",
        "histogram",
        ("phase",),
        "preprocess (validate, crop, resize) and postprocess (resize back, composite)",
    ),
    "ratio": FamilySpec(
        "fluxfill_denoised_pixel_ratio",
        "histogram",
        (),
        "share of the input's pixels inside the denoised crop",
    ),
    "load": FamilySpec("fluxfill_model_load_seconds", "gauge", (), "loading the weights plus the warm-up"),
    "gpu_peak": FamilySpec(
        "fluxfill_gpu_memory_peak_bytes", "gauge", (), "peak GPU memory allocated (CUDA only)"
    ),
    "cache": FamilySpec(
        "fluxfill_prompt_cache_requests_total",
        "counter",
        ("result",),
        "prompt-embedding cache lookups (hit, miss)",
    ),
    "info": FamilySpec(
        "fluxfill_model_info",
        "gauge",
        ("device", "dtype", "offload"),
        "1, labelled with where the weights live",
    ),
}


class ModelMetrics:
    """Counters, histograms and gauges of one model instance."""

    def __init__(self, triton: Any) -> None:
        factory = triton.MetricFamily
        kinds = {"counter": factory.COUNTER, "gauge": factory.GAUGE, "histogram": factory.HISTOGRAM}
        # The families must stay referenced for the model's lifetime, or later updates fail.
        self._families = {
            key: factory(name=spec.name, description=spec.description, kind=kinds[spec.kind])
            for key, spec in FAMILIES.items()
        }
        family = self._families
        self.outcomes = {
            outcome: family["requests"].Metric(labels={"outcome": outcome}) for outcome in OUTCOMES
        }
        self.in_progress = family["in_progress"].Metric(labels={})
        self.step_seconds = family["step"].Metric(labels={}, buckets=STEP_BUCKETS)
        self.denoise_seconds = family["denoise"].Metric(labels={}, buckets=RUN_BUCKETS)
        self.preprocess_seconds = family["phase"].Metric(
            labels={"phase": "preprocess"}, buckets=PHASE_BUCKETS
        )
        self.postprocess_seconds = family["phase"].Metric(
            labels={"phase": "postprocess"}, buckets=PHASE_BUCKETS
        )
        self.denoised_ratio = family["ratio"].Metric(labels={}, buckets=RATIO_BUCKETS)
        self.load_seconds = family["load"].Metric(labels={})
        self.gpu_peak_bytes = family["gpu_peak"].Metric(labels={})
        self.cache = {result: family["cache"].Metric(labels={"result": result}) for result in ("hit", "miss")}
        self._cache_seen = CacheStats()

    def record_load(self, seconds: float, device: str, dtype: str, offload: str) -> None:
        """Load time and where the weights live."""
        self.load_seconds.set(seconds)
        self._placement = self._families["info"].Metric(
            labels={"device": device, "dtype": dtype, "offload": offload}
        )
        self._placement.set(1)

    @contextmanager
    def serving(self, requests: int) -> Iterator[Callable[[], None]]:
        """`requests` taken from Triton's queue at once: each call of the yielded function says one was
        answered; any not answered by the end of the block are counted out then (the instance gave up on
        them). Incremented, not set: the instances of one model on several GPUs share the series."""
        unanswered = requests
        self.in_progress.increment(requests)

        def answered() -> None:
            nonlocal unanswered
            unanswered -= 1
            self.in_progress.increment(-1)

        try:
            yield answered
        finally:
            if unanswered:  # one IPC call to Triton fewer per run when all were answered
                self.in_progress.increment(-unanswered)

    def record_outcome(self, outcome: str) -> None:
        """Count one finished request."""
        self.outcomes[outcome].increment(1)

    def record_step(self, seconds: float) -> None:
        """One denoising step, as it finishes."""
        self.step_seconds.observe(seconds)

    def record_run(self, times: tuple[float, float, float], denoised_ratio: float, ran_model: bool) -> None:
        """Timings of one successful run (the phases as preprocess, denoise, postprocess)."""
        preprocess, denoise, postprocess = times
        self.preprocess_seconds.observe(preprocess)
        self.postprocess_seconds.observe(postprocess)
        if ran_model:
            self.denoise_seconds.observe(denoise)
            self.denoised_ratio.observe(denoised_ratio)

    def record_cache(self, stats: CacheStats) -> None:
        """Bring the cache counters up to the cache's own counts."""
        self.cache["hit"].increment(stats.hits - self._cache_seen.hits)
        self.cache["miss"].increment(stats.misses - self._cache_seen.misses)
        self._cache_seen = CacheStats(stats.hits, stats.misses)

    def record_gpu_peak(self, peak_bytes: int | None) -> None:
        """Peak allocated GPU memory since load (only where CUDA is present)."""
        if peak_bytes is not None:
            self.gpu_peak_bytes.set(peak_bytes)
