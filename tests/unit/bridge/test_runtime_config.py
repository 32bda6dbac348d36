"""Job defaults and experiments from the runtime config document: validated, cached, resolved per session."""

from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest

from fluxfill.bridge.contract import JobMessage
from fluxfill.bridge.runtime_config import (
    CachedRuntimeConfig,
    InvalidRuntimeConfigError,
    RuntimeConfig,
    assigned_variant,
    parse_runtime_config,
    resolve,
)

EXPERIMENT = {
    "name": "steps-test",
    "variants": [
        {"name": "control", "weight": 3},
        {"name": "fewer-steps", "weight": 1, "steps": 20, "prompt": "a quick photo"},
    ],
}


def job(**fields: Any) -> JobMessage:
    return JobMessage(userId=fields.pop("userId", "u1"), sessionId=fields.pop("sessionId", "s1"), **fields)


class Document:
    """Our RuntimeConfigSource port, in memory: the document, or an error to raise on read."""

    def __init__(self, fields: Mapping[str, Any] | None = None) -> None:
        self.fields = fields
        self.error: Exception | None = None
        self.reads = 0

    def read(self) -> Mapping[str, Any] | None:
        self.reads += 1
        if self.error is not None:
            raise self.error
        return self.fields


@pytest.mark.parametrize(
    ("document", "named"),
    [
        ({"defaults": {"steps": 500}}, "defaults.steps: Input should be less than or equal to 100"),
        ({"defaults": {"guidance": -1.0}}, "defaults.guidance"),
        ({"defaults": {"prompt": "x" * 5000}}, "defaults.prompt"),
        ({"defaults": {"seed": 1}}, "defaults.seed: Extra inputs are not permitted"),
        ({"defaults": {"steps": "28"}}, "defaults.steps: Input should be a valid integer"),
        ({"experiment": {"name": "e", "variants": []}}, "experiment.variants"),
        ({"experiment": {"name": "e", "variants": [{"name": "a", "weight": 0}]}}, "weight"),
        ({"experiment": {"name": "e", "variants": [{"name": "a", "weight": 1}] * 2}}, "must be unique"),
        ({"experiment": {"name": "a/b", "variants": [{"name": "a", "weight": 1}]}}, "experiment.name"),
        ({"something": 1}, "something: Extra inputs are not permitted"),
    ],
)
def test_an_invalid_document_is_refused_naming_the_field(document: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidRuntimeConfigError, match="invalid runtime config: ") as raised:
        parse_runtime_config(document)
    assert named in str(raised.value)


def test_no_document_means_the_models_own_defaults() -> None:
    assert parse_runtime_config(None) == RuntimeConfig()
    resolved = resolve(job(), RuntimeConfig())
    assert (resolved.prompt, resolved.steps, resolved.guidance, resolved.variant) == ("", None, None, None)
    assert resolved.recorded() == {"prompt": "", "steps": None, "guidance": None}


def test_per_job_fields_win_then_the_variant_then_the_defaults() -> None:
    config = parse_runtime_config(
        {"defaults": {"prompt": "a photo", "steps": 28, "guidance": 30.0}, "experiment": EXPERIMENT}
    )
    sessions = [f"s{i}" for i in range(40)]
    by_variant = {assigned_variant(config.experiment, "u1", s).name: s for s in sessions}  # type: ignore[arg-type]
    fewer = resolve(job(sessionId=by_variant["fewer-steps"]), config)
    assert (fewer.prompt, fewer.steps, fewer.guidance) == ("a quick photo", 20, 30.0)
    assert fewer.recorded()["experiment"] == {"name": "steps-test", "variant": "fewer-steps"}
    control = resolve(job(sessionId=by_variant["control"]), config)
    assert (control.prompt, control.steps, control.guidance) == ("a photo", 28, 30.0)
    own = resolve(job(sessionId=by_variant["fewer-steps"], prompt="a hat", steps=4, guidance=2.0), config)
    assert (own.prompt, own.steps, own.guidance, own.variant) == ("a hat", 4, 2.0, "fewer-steps")


def test_the_values_the_document_gave_are_told_apart_from_the_jobs_own() -> None:
    """So that the model refusing a configured value is the service's fault, not the job's (handler)."""
    config = parse_runtime_config({"defaults": {"prompt": "a photo", "steps": 28}, "experiment": EXPERIMENT})
    sessions = [f"s{i}" for i in range(40)]
    by_variant = {assigned_variant(config.experiment, "u1", s).name: s for s in sessions}  # type: ignore[arg-type]
    fewer = resolve(job(sessionId=by_variant["fewer-steps"]), config)
    assert fewer.configured_as("STEPS") == "experiment.variants[fewer-steps].steps"
    assert fewer.configured_as("PROMPT") == "experiment.variants[fewer-steps].prompt"
    assert fewer.configured_as("GUIDANCE") is None, "the model's own default"
    control = resolve(job(sessionId=by_variant["control"], steps=4), config)
    assert control.configured_as("PROMPT") == "defaults.prompt"
    assert control.configured_as("STEPS") is None, "the job's own"
    assert control.configured_as("IMAGE") is None
    assert resolve(job(prompt="a hat"), RuntimeConfig()).configured == {}


def test_a_sessions_variant_is_stable_and_the_shares_follow_the_weights() -> None:
    experiment = parse_runtime_config({"experiment": EXPERIMENT}).experiment
    assert experiment is not None
    assert all(
        assigned_variant(experiment, "u1", f"s{i}") == assigned_variant(experiment, "u1", f"s{i}")
        for i in range(100)
    )
    counts = Counter(assigned_variant(experiment, "u", f"session-{i}").name for i in range(20_000))
    # 3:1 weights: 75 % +- 1.5 % (about 5 standard deviations at 20,000 sessions).
    assert abs(counts["control"] / 20_000 - 0.75) < 0.015
    renamed = parse_runtime_config({"experiment": {**EXPERIMENT, "name": "another"}}).experiment
    assert renamed is not None
    moved = sum(
        assigned_variant(experiment, "u", f"s{i}").name != assigned_variant(renamed, "u", f"s{i}").name
        for i in range(2000)
    )
    assert moved > 400, "a new experiment reshuffles sessions independently of the last one"


def test_the_document_is_read_once_per_lifetime_and_changes_reach_the_next_read() -> None:
    now = [0.0]
    document = Document({"defaults": {"steps": 10}})
    cache = CachedRuntimeConfig(document, lifetime_s=30.0, clock=lambda: now[0])
    assert cache.resolve(job()).steps == 10
    document.fields = {"defaults": {"steps": 12}}
    now[0] = 29.9
    assert cache.resolve(job()).steps == 10
    assert document.reads == 1
    now[0] = 30.0
    assert cache.resolve(job()).steps == 12
    assert document.reads == 2


def test_an_invalid_document_or_a_failed_read_keeps_the_last_good_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    now = [0.0]
    document = Document({"defaults": {"steps": 10}})
    cache = CachedRuntimeConfig(document, lifetime_s=1.0, clock=lambda: now[0])
    assert cache.resolve(job()).steps == 10
    document.fields = {"defaults": {"steps": 500}}
    now[0] = 1.0
    assert cache.resolve(job()).steps == 10
    document.error = ConnectionError("firestore is away")
    now[0] = 2.0
    assert cache.resolve(job()).steps == 10
    logged = capsys.readouterr().out
    assert "runtime config document INVALID" in logged
    assert "defaults.steps" in logged
    assert "runtime config unreadable" in logged
    document.error, document.fields = None, None
    now[0] = 3.0
    assert cache.resolve(job()).steps is None, "a deleted document means the model's defaults again"


def test_the_command_line_and_the_bridge_default_to_one_document() -> None:
    from fluxfill.bridge.contract import DEFAULT_RUNTIME_CONFIG_DOCUMENT
    from fluxfill.bridge.settings import BridgeSettings
    from fluxfill.client.cli_jobs import DEFAULT_CONFIG_DOCUMENT

    assert DEFAULT_CONFIG_DOCUMENT == DEFAULT_RUNTIME_CONFIG_DOCUMENT
    default = BridgeSettings.model_fields["runtime_config_document"].default
    assert default == DEFAULT_RUNTIME_CONFIG_DOCUMENT


def test_the_command_line_and_the_bridge_default_to_one_firestore_database() -> None:
    from fluxfill.bridge.contract import DEFAULT_FIRESTORE_DATABASE
    from fluxfill.bridge.settings import BridgeSettings
    from fluxfill.client.cli_jobs import DEFAULT_DATABASE

    assert DEFAULT_DATABASE == DEFAULT_FIRESTORE_DATABASE == "(default)"
    assert BridgeSettings.model_fields["firestore_database"].default == DEFAULT_FIRESTORE_DATABASE
