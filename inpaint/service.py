"""The whole model behind one object: load (and warm up) once, then run validated requests."""

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from fluxfill.inpaint.config import ConfigError, ModelConfig, parse_model_config
from fluxfill.inpaint.engine import InpaintEngine, InpaintResult, PreviewCallback
from fluxfill.inpaint.errors import InvalidInputError
from fluxfill.inpaint.geometry import working_size
from fluxfill.inpaint.pipeline import LoadReport, load_pipeline, peak_gpu_bytes
from fluxfill.inpaint.prompt_cache import CacheStats
from fluxfill.inpaint.request import InpaintRequest, RawInputs, build_request
from fluxfill.inpaint.run_control import ProgressSink, StepGuard, never_cancelled
from fluxfill.inpaint.watchdog import StallWatchdog

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Run:
    """A finished run and its per-step timings."""

    result: InpaintResult
    step_seconds: list[float]
    total_steps: int


class FluxFillService:
    """What the Triton adapters drive: `load` once, then `run` per request."""

    def __init__(
        self,
        engine: InpaintEngine,
        config: ModelConfig,
        report: LoadReport,
        cache_stats: CacheStats | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.report = report
        self.load_seconds = 0.0
        self.cache_stats = cache_stats or CacheStats()
        # Watches `run` only (warm-up may compile for minutes); its thread is started by the Triton model.
        self.watchdog = StallWatchdog(config.stall_seconds)

    @classmethod
    def load(cls, parameters: Mapping[str, str], device: str) -> "FluxFillService":
        """Parse the parameters, load the weights and warm up; raises ConfigError or WeightsError."""
        started = time.perf_counter()
        config = parse_model_config(parameters)
        denoiser, report = load_pipeline(config, device)
        try:  # encoded once here: the warm-up and every request with an empty PROMPT find it cached
            denoiser.prompt_cache.get(config.default_prompt)
        except InvalidInputError as error:  # a default the model cannot read would fail every such request
            raise ConfigError("default_prompt", error.problem) from None
        service = cls(InpaintEngine(denoiser, config), config, report, denoiser.prompt_cache.stats)
        service.warm_up()
        if config.t5_placement == "cpu" and report.offload.mode == "none":
            # After warm-up the default prompt is cached, so the fixed-prompt case never touches T5 again.
            denoiser.park_t5()
        service.load_seconds = time.perf_counter() - started
        return service

    def warm_up_sizes(self) -> list[tuple[int, int]]:
        """Every bucket when compiling (each shape compiles once), else the largest working size."""
        config = self.config
        if config.resolution_buckets and config.compile != "off":
            return list(config.resolution_buckets)
        side = int(np.sqrt(config.max_working_pixels))
        return [working_size(side, side, config.min_working_pixels, config.max_working_pixels)]

    def warm_up(self) -> None:
        """Inference before READY, so the first user request pays no first-run (or compile) cost."""
        if self.config.warmup_steps == 0:
            return
        for width, height in self.warm_up_sizes():
            request = InpaintRequest(
                image=np.full((height, width, 3), 127, np.uint8),
                mask=np.ones((height, width), bool),
                prompt=self.config.default_prompt,
                steps=self.config.warmup_steps,
                guidance=self.config.default_guidance,
                seed=0,
            )
            started = time.perf_counter()
            result = self.engine.inpaint(request)
            elapsed = time.perf_counter() - started
            logger.info("warm-up at %s, %d steps: %.2f s", result.working_size, request.steps, elapsed)

    def run(
        self,
        inputs: RawInputs,
        *,
        is_cancelled: Callable[[], bool] = never_cancelled,
        on_progress: ProgressSink | None = None,
        on_step_seconds: Callable[[float], None] | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> Run:
        """Validate the raw inputs (InvalidInputError) and inpaint, stopping on cancel or time limit."""
        request = build_request(inputs, self.config)
        guard = StepGuard(
            time_limit_s=request.time_limit_s,
            is_cancelled=is_cancelled,
            on_progress=on_progress,
            on_step_seconds=on_step_seconds,
            on_alive=self.watchdog.alive,
        )
        guard.check(0, request.steps)
        with self.watchdog.watching():
            result = self.engine.inpaint(request, guard, on_preview)
        total = request.steps if result.denoised_box is not None else 0
        return Run(result, guard.step_durations, total)

    def gpu_peak_bytes(self) -> int | None:
        """Peak GPU memory since load, where CUDA is present."""
        return peak_gpu_bytes(self.report.device)
