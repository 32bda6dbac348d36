"""The whole model behind one object: parameters in, validated requests through the engine."""

from collections.abc import Mapping

from fluxfill.inpaint.config import ModelConfig, parse_model_config
from fluxfill.inpaint.engine import InpaintEngine, InpaintResult, StepCallback
from fluxfill.inpaint.pipeline import LoadReport, load_pipeline
from fluxfill.inpaint.request import RawInputs, build_request


class FluxFillService:
    """What the Triton adapter drives: load once, then `run` per request."""

    def __init__(self, engine: InpaintEngine, config: ModelConfig, report: LoadReport) -> None:
        self.engine = engine
        self.config = config
        self.report = report

    @classmethod
    def load(cls, parameters: Mapping[str, str], device: str) -> "FluxFillService":
        """Parse the parameters and load the weights; raises ConfigError or WeightsError."""
        config = parse_model_config(parameters)
        denoiser, report = load_pipeline(config, device)
        return cls(InpaintEngine(denoiser, config), config, report)

    def run(self, inputs: RawInputs, on_step: StepCallback | None = None) -> InpaintResult:
        """Validate the raw inputs (InvalidInputError) and inpaint."""
        return self.engine.inpaint(build_request(inputs, self.config), on_step)
