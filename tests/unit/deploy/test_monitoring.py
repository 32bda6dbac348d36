"""The dashboard and alert policies query metrics that exist, and cover what on-call looks at first."""

import re
from pathlib import Path
from typing import Any

import pytest

from fluxfill.bridge.contract import ErrorCode
from fluxfill.bridge.errors import RetryCause
from fluxfill.bridge.metrics import BridgeMetrics
from fluxfill.bridge.outcome import OutcomeKind
from fluxfill.client import triton_supervisor
from fluxfill.inpaint.metrics import FAMILIES
from tests.unit.bridge.fakes import png
from tests.unit.bridge.world import PREFIX, USER, World, photo
from tests.unit.deploy.support import DEPLOY, config_env, load_json

DASHBOARD = DEPLOY / "monitoring" / "dashboard.json"
# Alerts on metrics (PromQL), and alerts on log entries (a filter of Cloud Logging's).
ALERTS = sorted(
    path
    for path in (DEPLOY / "monitoring" / "alerts").glob("*.json")
    if "conditionMatchedLog" not in path.read_text()
)
LOG_ALERTS = sorted(set((DEPLOY / "monitoring" / "alerts").glob("*.json")) - set(ALERTS))
METRIC = re.compile(r"\b(?:fluxfill_\w+|nv_\w+|pubsub_googleapis_com:\w+)\b")
# Triton 2.51's own families on the metrics port (docs/user_guide/metrics.md), those we query.
TRITON_FAMILIES = {
    "nv_gpu_utilization",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_memory_total_bytes",
    "nv_inference_pending_request_count",
}
# Cloud Monitoring's Pub/Sub metrics as Managed Prometheus names them ('/' -> ':', '.' -> '_').
PUBSUB_METRICS = {
    "pubsub_googleapis_com:subscription_oldest_unacked_message_age",
    "pubsub_googleapis_com:subscription_num_undelivered_messages",
}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exposed_names() -> set[str]:
    """Every sample name the model (through Triton) and the bridge put on their /metrics pages."""
    names = set(TRITON_FAMILIES | PUBSUB_METRICS)
    for spec in FAMILIES.values():
        # Triton exposes a custom family under its given name (counters already end in _total).
        names |= {spec.name + s for s in SUFFIXES[spec.kind]} if spec.kind == "histogram" else {spec.name}
    for family in BridgeMetrics().registry.collect():
        names |= {family.name + s for s in SUFFIXES[family.type]}
    return names


def queries() -> dict[str, list[str]]:
    """PromQL of every dashboard chart and alert condition, by file."""
    found: dict[str, list[str]] = {}

    def walk(node: Any, into: list[str]) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in {"prometheusQuery", "query"} and isinstance(value, str):
                    into.append(value)
                else:
                    walk(value, into)
        elif isinstance(node, list):
            for item in node:
                walk(item, into)

    for path in [DASHBOARD, *ALERTS]:
        walk(load_json(path), found.setdefault(path.name, []))
    return found


def test_every_chart_and_alert_has_a_query() -> None:
    found = queries()
    assert len(found[DASHBOARD.name]) >= 10
    assert all(len(found[path.name]) == 1 for path in ALERTS)


@pytest.mark.parametrize("path", [DASHBOARD, *ALERTS], ids=lambda p: Path(p).name)
def test_queried_metrics_exist(path: Path) -> None:
    known = exposed_names()
    for query in queries()[path.name]:
        names = set(METRIC.findall(query))
        assert names, query
        assert names <= known, f"{path.name}: unknown {names - known}"


def test_outcome_labels_in_queries_are_real_outcomes() -> None:
    outcomes = {kind.value for kind in OutcomeKind}
    for found in queries().values():
        for query in found:
            if "fluxfill_bridge_jobs_total" in query:
                for values in re.findall(r'outcome=~?"([^"]+)"', query):
                    assert set(values.split("|")) <= outcomes, query


def test_the_dashboard_tells_deliveries_given_back_apart_by_cause() -> None:
    """A retry's cause (Triton, Firestore, Storage, a late session document, a bug) is the jobs counter's
    `cause` label; before, on-call saw one `retry` rate for all of them."""
    [query] = [q for q in queries()[DASHBOARD.name] if "by (cause)" in q]
    assert 'fluxfill_bridge_jobs_total{outcome="retry"}' in query
    metrics = BridgeMetrics()
    metrics.jobs.labels("retry", "", "", RetryCause.SESSION_NOT_YET.value).inc()
    assert metrics.sample("fluxfill_bridge_jobs_total", {"outcome": "retry", "cause": "session_not_yet"}) == 1


def test_subscriptions_in_queries_are_ours() -> None:
    config = config_env()
    ours = {config[k] for k in ("PULL_SUBSCRIPTION", "PUSH_SUBSCRIPTION", "DEAD_LETTER_SUBSCRIPTION")}
    for found in queries().values():
        for query in found:
            for values in re.findall(r'subscription_id=~?"([^"]+)"', query):
                assert set(values.split("|")) <= ours, query


def test_dashboard_shows_what_on_call_needs_first() -> None:
    text = " ".join(queries()[DASHBOARD.name])
    for needed in (
        "subscription_oldest_unacked_message_age",  # queue age
        "fluxfill_bridge_jobs_total",  # jobs by outcome
        "fluxfill_bridge_phase_seconds_bucket",  # latency by phase
        "nv_gpu_memory_used_bytes",  # GPU memory
        "nv_gpu_utilization",  # GPU utilisation
        "fluxfill_step_duration_seconds_bucket",  # step time
    ):
        assert needed in text, needed


def test_alerts_cover_the_issue() -> None:
    by_name = {path.stem: " ".join(queries()[path.name]) for path in ALERTS}
    assert "oldest_unacked_message_age" in by_name["queue-age"]
    assert 'outcome=~"failed|dead_letter"' in by_name["failure-rate"]
    assert config_env()["DEAD_LETTER_SUBSCRIPTION"] in by_name["dead-letters"]
    assert "fluxfill_bridge_ready" in by_name["model-not-ready"]
    assert "nv_gpu_memory_used_bytes" in by_name["gpu-memory"]
    assert "fluxfill_bridge_pull_errors_total" in by_name["pull-failing"]
    assert 'cause="internal_error"' in by_name["bridge-bugs"]
    for path in [*ALERTS, *LOG_ALERTS]:
        policy = load_json(path)
        assert "Runbook" in policy["documentation"]["content"], path.name


def test_a_triton_stopped_for_its_stub_alerts_on_the_supervisors_error_entry() -> None:
    """Its only trace is the supervisor's log entry (the container is replaced): an ERROR of its logger, as
    tests/unit/client/test_triton_supervisor.py shows it written."""
    [path] = [path for path in LOG_ALERTS if path.stem == "triton-stub-died"]
    policy = load_json(path)
    [condition] = policy["conditions"]
    assert condition["conditionMatchedLog"]["filter"] == (
        f'jsonPayload.logger="{triton_supervisor.LOGGER}" AND severity>=ERROR'
    )
    # Cloud Monitoring refuses a log-match policy without a notification rate limit.
    assert policy["alertStrategy"]["notificationRateLimit"]["period"]


# A PromQL label matcher: name, operator, quoted value.
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def selects(matchers: str, labels: dict[str, str]) -> bool:
    """Whether a series of these labels is selected by a selector's matchers (PromQL's rules: a missing label
    is the empty string, regular expressions match the whole value)."""
    for name, operator, value in MATCHER.findall(matchers):
        actual = labels.get(name, "")
        matched = actual == value if operator in ("=", "!=") else re.fullmatch(value, actual) is not None
        if matched is (operator in ("!=", "!~")):
            return False
    return True


def jobs_samples(metrics: BridgeMetrics) -> list[tuple[dict[str, str], float]]:
    """The labels and value of every non-zero jobs series."""
    return [
        (sample.labels, sample.value)
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == "fluxfill_bridge_jobs_total" and sample.value
    ]


def counted_by(query: str, metrics: BridgeMetrics) -> set[tuple[str, str]]:
    """(outcome, code) of every non-zero jobs series the query's first jobs selector selects."""
    found = re.search(r"fluxfill_bridge_jobs_total\{([^}]*)\}", query)
    assert found is not None, query
    return {
        (labels["outcome"], labels["code"])
        for labels, _ in jobs_samples(metrics)
        if selects(found[1], labels)
    }


def failure_ratio(query: str, metrics: BridgeMetrics) -> float:
    """The alert's `sum(rate(jobs{A})) / sum(rate(jobs{B}))` over counts (one window, rates alike): its
    numerator's selected samples over its denominator's."""
    selectors = re.findall(r"fluxfill_bridge_jobs_total(?:\{([^}]*)\})?\[", query)
    assert len(selectors) == 2, query
    numerator, denominator = (
        sum(value for labels, value in jobs_samples(metrics) if selects(matchers, labels))
        for matchers in selectors
    )
    return numerator / denominator


def test_the_failure_rate_alert_pages_for_the_services_failures_not_for_bad_uploads() -> None:
    """One user uploading corrupt photos again and again (or a hostile one) made more than 10 % of jobs fail
    and paged the on-call, who can do nothing about it; a job that runs past its deadline is ours."""
    world = World(job_deadline_s=0.2)
    world.objects.objects[f"{PREFIX}/original.png"] = png(photo())[:60]
    assert world.deliver().code is ErrorCode.CORRUPT_IMAGE
    world.upload(USER, "slow")
    world.model.step_s = 0.05
    assert world.deliver(message_id="m2", sessionId="slow", steps=100).code is ErrorCode.DEADLINE_EXCEEDED
    world.upload(USER, "fine")
    world.model.step_s = 0.0
    assert world.deliver(message_id="m3", sessionId="fine", steps=2).kind is OutcomeKind.DONE

    [alert] = queries()["failure-rate.json"]
    assert counted_by(alert, world.metrics) == {("failed", "deadline_exceeded")}
    [failures] = [q for q in queries()[DASHBOARD.name] if "sum by (code)" in q]
    assert counted_by(failures, world.metrics) == {
        ("failed", "corrupt_image"),
        ("failed", "deadline_exceeded"),
    }


def test_the_failure_rate_counts_jobs_that_ended_not_deliveries_given_back_or_skipped() -> None:
    """Half the jobs that ended failed by the service's fault: that pages, however many deliveries were given
    back meanwhile (Triton away, a document not written yet), skipped as duplicates, or orphaned. Over
    every outcome, such deliveries diluted the ratio below the threshold while jobs failed."""
    world = World(job_deadline_s=0.2, upload_grace_s=30.0)
    world.model.step_s = 0.05
    assert world.deliver(steps=100).code is ErrorCode.DEADLINE_EXCEEDED
    world.upload(USER, "fine")
    world.model.step_s = 0.0
    assert world.deliver(message_id="m2", sessionId="fine", steps=2).kind is OutcomeKind.DONE
    for copy in range(5):
        assert world.deliver(message_id=f"d{copy}", sessionId="fine").kind is OutcomeKind.DUPLICATE
    for late in range(20):
        looked_again = world.deliver(message_id=f"l{late}", sessionId=f"not-written-{late}")
        assert looked_again.kind is OutcomeKind.RETRY
    for gone in range(5):
        orphaned = world.deliver(message_id=f"o{gone}", sessionId=f"gone-{gone}", published_s_ago=60.0)
        assert orphaned.kind is OutcomeKind.ORPHANED

    [alert] = queries()["failure-rate.json"]
    assert failure_ratio(alert, world.metrics) == 0.5
    assert alert.endswith("> 0.1")


def test_a_bug_that_gives_jobs_back_pages_and_nothing_else_does() -> None:
    """A message that meets a bug every time came back for up to 100 deliveries (about 15 hours) before
    Pub/Sub dead-lettered it, seen only as queue age; outages and late documents are the other alerts'."""
    world = World(readiness=True)
    world.model.fail_with = ZeroDivisionError("a bug")
    assert world.deliver(attempt=1).cause is RetryCause.INTERNAL_ERROR
    world.model.fail_with = None
    world.upload(USER, "late")
    del world.sessions.documents[f"users/{USER}/sessions/late"]
    assert world.deliver(message_id="m2", sessionId="late").cause is RetryCause.SESSION_NOT_YET
    world.model.ready = False
    assert world.readiness is not None
    world.readiness.check()
    assert world.deliver(message_id="m3").cause is RetryCause.MODEL_NOT_READY

    [alert] = queries()["bridge-bugs.json"]
    found = re.search(r"fluxfill_bridge_jobs_total\{([^}]*)\}", alert)
    assert found is not None
    causes = {labels["cause"] for labels, _ in jobs_samples(world.metrics) if selects(found[1], labels)}
    assert causes == {"internal_error"}


def test_selects_reads_label_matchers_as_promql_does() -> None:
    labels = {"outcome": "failed", "fault": "input"}
    assert selects('outcome=~"failed|dead_letter", fault="input"', labels)
    assert not selects('outcome=~"fail"', labels), "anchored"
    assert not selects('fault!="input"', labels)
    assert selects('code=""', labels), "a missing label is empty"
    assert selects('code!~"corrupt_image"', labels)
