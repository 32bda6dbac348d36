"""deploy/pubsub-iam.sh makes one topology per deployment, pull or push, never both (over a fake gcloud)."""

import os
import subprocess
from pathlib import Path

import pytest

from fluxfill.bridge.adapters.cancels_store import INDEXED_FIELDS
from fluxfill.bridge.contract import DEFAULT_SESSION_TEMPLATE
from fluxfill.bridge.path_templates import session_collection
from tests.unit.deploy.support import DEPLOY, config_env

CONFIG = config_env()
FAKE_GCLOUD = """#!/usr/bin/env bash
# Records each call; `describe` succeeds for the project and for subscriptions named in $EXISTING.
echo "$*" >> "${GCLOUD_LOG}"
case "$*" in
  *"projects describe"*) echo 123 ;;
  *"subscriptions describe"*)
    for name in ${EXISTING:-}; do [[ "$*" == *"describe ${name}"* ]] && exit 0; done
    exit 1 ;;
  *" describe "*) exit 1 ;;
  *"indexes composite create"*) [[ -z ${INDEX_ERROR:-} ]] || { echo "${INDEX_ERROR}" >&2; exit 1; } ;;
esac
"""


def run_script(
    tmp_path: Path, delivery: str, existing: str = "", **environment: str
) -> tuple[subprocess.CompletedProcess[str], str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD)
    gcloud.chmod(0o755)
    log = tmp_path / "gcloud.log"
    log.touch()
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "GCLOUD_LOG": str(log),
        "EXISTING": existing,
        "DELIVERY": delivery,
        **environment,
    }
    result = subprocess.run(
        ["bash", str(DEPLOY / "pubsub-iam.sh")], env=env, capture_output=True, text=True, check=False
    )
    return result, log.read_text()


def test_the_shipped_topology_is_pull() -> None:
    assert CONFIG["DELIVERY"] == "pull"


def test_pull_creates_only_the_pull_subscriptions_and_removes_push_ones(tmp_path: Path) -> None:
    existing = f"{CONFIG['PUSH_SUBSCRIPTION']} {CONFIG['URGENT_PUSH_SUBSCRIPTION']}"
    result, calls = run_script(tmp_path, "pull", existing=existing)
    assert result.returncode == 0, result.stderr
    assert f"subscriptions create {CONFIG['PULL_SUBSCRIPTION']} --topic={CONFIG['TOPIC']}" in calls
    urgent = f"subscriptions create {CONFIG['URGENT_PULL_SUBSCRIPTION']} --topic={CONFIG['URGENT_TOPIC']}"
    assert urgent in calls
    assert "--push-endpoint" not in calls
    for push in (CONFIG["PUSH_SUBSCRIPTION"], CONFIG["URGENT_PUSH_SUBSCRIPTION"]):
        assert f"subscriptions create {push}" not in calls
        assert f"subscriptions delete {push}" in calls
    assert "run services add-iam-policy-binding" not in calls
    # The bridge pulls both lanes and publishes waiting jobs' copies to both job topics.
    bridge = f"--member=serviceAccount:{CONFIG['BRIDGE_SA']}"
    for subscription in (CONFIG["PULL_SUBSCRIPTION"], CONFIG["URGENT_PULL_SUBSCRIPTION"]):
        assert f"subscriptions add-iam-policy-binding {subscription} {bridge}" in calls
    for topic in (CONFIG["TOPIC"], CONFIG["URGENT_TOPIC"]):
        assert f"topics add-iam-policy-binding {topic} {bridge} --role=roles/pubsub.publisher" in calls


def test_push_creates_only_the_push_subscriptions_and_removes_a_pull_one(tmp_path: Path) -> None:
    result, calls = run_script(tmp_path, "push", existing=CONFIG["PULL_SUBSCRIPTION"])
    assert result.returncode == 0, result.stderr
    urgent = f"subscriptions create {CONFIG['URGENT_PUSH_SUBSCRIPTION']} --topic={CONFIG['URGENT_TOPIC']}"
    assert urgent in calls, "urgent jobs must be delivered in push mode too"
    creates = [line for line in calls.splitlines() if f"--topic={CONFIG['TOPIC']} " in line]
    (create,) = [line for line in creates if "subscriptions create" in line]
    assert f"subscriptions create {CONFIG['PUSH_SUBSCRIPTION']} --topic={CONFIG['TOPIC']}" in create
    assert f"--push-endpoint={CONFIG['PUSH_AUDIENCE']}" in create
    assert f"subscriptions delete {CONFIG['PULL_SUBSCRIPTION']}" in calls
    assert f"add-iam-policy-binding {CONFIG['PULL_SUBSCRIPTION']}" not in calls


@pytest.mark.parametrize("delivery", ["both", ""])
def test_any_other_topology_is_refused_before_anything_is_changed(tmp_path: Path, delivery: str) -> None:
    result, calls = run_script(tmp_path, delivery)
    assert result.returncode == 2
    assert "DELIVERY must be pull or push" in result.stderr
    assert calls == ""


@pytest.mark.parametrize("delivery", ["pull", "push"])
@pytest.mark.parametrize("exists", [False, True], ids=["created", "updated"])
def test_no_subscription_expires_when_idle(tmp_path: Path, delivery: str, exists: bool) -> None:
    """Pub/Sub deletes a subscription after 31 days without activity unless told never to: the dead-letter
    subscription, read only when someone looks, and an urgent push lane with no urgent job for a month would
    go, and every message published to their topics afterwards would be lost with them."""
    lanes = ("PULL", "URGENT_PULL", "PUSH", "URGENT_PUSH", "DEAD_LETTER")
    names = [CONFIG[f"{lane}_SUBSCRIPTION"] for lane in lanes]
    result, calls = run_script(tmp_path, delivery, existing=" ".join(names) if exists else "")
    assert result.returncode == 0, result.stderr
    made = [line for line in calls.splitlines() if " subscriptions create " in f" {line}"]
    made += [line for line in calls.splitlines() if " subscriptions update " in f" {line}"]
    wanted = {CONFIG[f"{'URGENT_' * urgent}{delivery.upper()}_SUBSCRIPTION"] for urgent in (0, 1)}
    wanted.add(CONFIG["DEAD_LETTER_SUBSCRIPTION"])
    assert {line.split()[line.split().index("subscriptions") + 2] for line in made} == wanted
    for line in made:
        assert "--expiration-period=never" in line.split(), line


@pytest.mark.parametrize("database", [CONFIG["FIRESTORE_DATABASE"], "petapp"])
def test_the_ledgers_time_to_live_is_set_on_the_database_the_bridge_writes(
    tmp_path: Path, database: str
) -> None:
    """An app's named database holds the bridge's dead-letter ledger too: its TTL policy set on `(default)`
    left every entry there for ever."""
    result, calls = run_script(tmp_path, "pull", FIRESTORE_DATABASE=database)
    assert result.returncode == 0, result.stderr
    (ttl,) = [line for line in calls.splitlines() if "firestore fields ttls update" in line]
    assert f"--database={database}" in ttl.split(), ttl


def test_the_cancel_sweeps_index_is_made_for_its_query_in_the_bridges_database(tmp_path: Path) -> None:
    """The sweep's collection-group query (fluxfill.bridge.adapters.cancels_store) fails in production without
    its composite index; it is made for the collection the shipped session template names, on the fields the
    query filters, in the database the bridge reads."""
    result, calls = run_script(tmp_path, "pull", FIRESTORE_DATABASE="petapp")
    assert result.returncode == 0, result.stderr
    (create,) = [line.split() for line in calls.splitlines() if "indexes composite create" in line]
    assert f"--collection-group={session_collection(DEFAULT_SESSION_TEMPLATE)}" in create
    assert "--query-scope=collection-group" in create
    assert "--database=petapp" in create
    fields = [
        flag.split(",")[0].removeprefix("--field-config=field-path=")
        for flag in create
        if "field-path" in flag
    ]
    assert fields == [str(name) for name in INDEXED_FIELDS]


@pytest.mark.parametrize(
    ("error", "code"),
    [("ERROR: (gcloud.firestore) ALREADY_EXISTS: index already exists", 0), ("PERMISSION_DENIED", 1)],
)
def test_an_index_made_before_is_left_and_another_failure_stops_the_script(
    tmp_path: Path, error: str, code: int
) -> None:
    result, calls = run_script(tmp_path, "pull", INDEX_ERROR=error)
    assert result.returncode == code, result.stderr
    assert ("PERMISSION_DENIED" in result.stderr) is bool(code)
    assert ("pubsub topics add-iam-policy-binding" in calls) is not bool(code), "stopped there"
