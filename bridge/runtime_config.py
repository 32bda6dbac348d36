"""Service-wide job defaults and experiments from a Firestore document, changed without a redeploy.

The document (path: `runtime_config_document`) holds defaults for what a job may omit (prompt, steps,
guidance) and optionally one experiment: named variants with weights, each a set of such values. A session is
assigned a variant deterministically (a hash of the experiment's name and the session's ids), so its retries
and replays get the same one. Per-job fields always win; then the variant; then the defaults; then the
model's own config.pbtxt defaults (a value left out all the way down is not sent).

The bridge reads the document at most once per `runtime_config_cache_s`. It is validated with the rules of a
job; an invalid document is logged as an error and ignored, keeping the last good one (as is a failed read).

    {"defaults": {"prompt": "a photo", "steps": 28, "guidance": 30},
     "experiment": {"name": "steps-2026-12", "variants": [
         {"name": "control", "weight": 1},
         {"name": "fewer-steps", "weight": 1, "steps": 20}]}}
"""

import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fluxfill.bridge.contract import MAX_STEPS, Identifier, JobMessage, Prompt

logger = structlog.get_logger(__name__)


class JobDefaults(BaseModel):
    """Values for what a job omits, with a job's own rules."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    prompt: Prompt | None = None
    steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    guidance: float | None = Field(default=None, ge=0.0, le=100.0)


class Variant(JobDefaults):
    """One arm of an experiment: its name, its share (relative weight) and its values."""

    name: Identifier
    weight: float = Field(gt=0.0, le=1e6)


class Experiment(BaseModel):
    """Named variants; a session's variant follows the weights."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: Identifier
    variants: list[Variant] = Field(min_length=1, max_length=100)

    @field_validator("variants")
    @classmethod
    def _unique_names(cls, variants: list[Variant]) -> list[Variant]:
        names = [variant.name for variant in variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        return variants


class RuntimeConfig(BaseModel):
    """The whole document; empty means: the model's own defaults, no experiment."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    defaults: JobDefaults = JobDefaults()
    experiment: Experiment | None = None


class InvalidRuntimeConfigError(ValueError):
    """The document breaks a rule; the message names every bad field."""


def parse_runtime_config(document: Mapping[str, Any] | None) -> RuntimeConfig:
    """Validate a document (None: no document); InvalidRuntimeConfigError naming each bad field."""
    try:
        return RuntimeConfig.model_validate(dict(document or {}))
    except ValidationError as error:
        problems = [
            f"{'.'.join(str(part) for part in item['loc']) or 'document'}: {item['msg']}"
            for item in error.errors(include_url=False, include_input=False)
        ]
        raise InvalidRuntimeConfigError("invalid runtime config: " + "; ".join(problems)) from None


def assigned_variant(experiment: Experiment, user: str, session: str) -> Variant:
    """The session's variant: a stable hash of experiment and session mapped onto the cumulative weights."""
    digest = hashlib.sha256(f"{experiment.name}\0{user}\0{session}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * sum(v.weight for v in experiment.variants)
    for variant in experiment.variants:
        point -= variant.weight
        if point < 0:
            return variant
    return experiment.variants[-1]


# The model's input each job field is sent as.
_TENSORS = {"prompt": "PROMPT", "steps": "STEPS", "guidance": "GUIDANCE"}


@dataclass(frozen=True)
class ResolvedParameters:
    """What a job runs with, and where each value came from being recorded by the caller."""

    prompt: str
    steps: int | None
    guidance: float | None
    experiment: str | None = None
    variant: str | None = None
    # The fields the document gave, and where in it ("defaults.steps", "experiment.variants[fewer].steps"): a
    # value the model refuses from there is the service's mistake, not the job's.
    configured: Mapping[str, str] = field(default_factory=dict)

    def recorded(self) -> dict[str, Any]:
        """The session's `model` fields these add."""
        fields: dict[str, Any] = {"prompt": self.prompt, "steps": self.steps, "guidance": self.guidance}
        if self.experiment is not None:
            fields["experiment"] = {"name": self.experiment, "variant": self.variant}
        return fields

    def configured_as(self, tensor: str) -> str | None:
        """Where the document gave the value sent as the model's input `tensor`; None: not from there."""
        return next((where for name, where in self.configured.items() if _TENSORS[name] == tensor), None)


def resolve(job: JobMessage, config: RuntimeConfig) -> ResolvedParameters:
    """Per-job fields win, then the session's variant, then the defaults; None is left to the model."""
    experiment = config.experiment
    variant = assigned_variant(experiment, job.userId, job.sessionId) if experiment is not None else None
    layers: list[tuple[str, JobDefaults]] = [("defaults", config.defaults)]
    if experiment is not None and variant is not None:
        layers.insert(0, (f"experiment.variants[{variant.name}]", variant))
    configured: dict[str, str] = {}

    def first(name: str, own: Any) -> Any:
        if own is not None:
            return own
        for where, layer in layers:
            value = getattr(layer, name)
            if value is not None:
                configured[name] = f"{where}.{name}"
                return value
        return None

    return ResolvedParameters(
        prompt=first("prompt", job.prompt or None) or "",
        steps=first("steps", job.steps),
        guidance=first("guidance", job.guidance),
        experiment=experiment.name if experiment is not None else None,
        variant=variant.name if variant is not None else None,
        configured=configured,
    )


class RuntimeConfigSource(Protocol):
    """Reads the raw document (None when there is none); may raise on a failed read."""

    def read(self) -> Mapping[str, Any] | None:
        """The document's fields now."""
        ...


class CachedRuntimeConfig:
    """The last good configuration, re-read at most once per `lifetime_s`; thread-safe."""

    def __init__(
        self,
        source: RuntimeConfigSource,
        lifetime_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._lifetime_s = lifetime_s
        self._clock = clock
        self._lock = threading.Lock()
        self._config = RuntimeConfig()
        self._read_at: float | None = None

    def current(self) -> RuntimeConfig:
        """The configuration to apply now."""
        with self._lock:
            now = self._clock()
            if self._read_at is None or now - self._read_at >= self._lifetime_s:
                self._read_at = now
                self._refresh()
            return self._config

    def _refresh(self) -> None:
        try:
            document = self._source.read()
        except Exception as error:  # a failed read keeps the last good configuration
            logger.warning("runtime config unreadable; keeping the last good one", error=str(error))
            return
        try:
            config = parse_runtime_config(document)
        except InvalidRuntimeConfigError as error:
            logger.error(
                "runtime config document INVALID; ignored, keeping the last good one", error=str(error)
            )
            return
        if config != self._config:
            logger.info("runtime config changed", config=config.model_dump(exclude_none=True))
        self._config = config

    def resolve(self, job: JobMessage) -> ResolvedParameters:
        """The job's parameters under the current configuration."""
        return resolve(job, self.current())
