"""Queued jobs their app cancelled, ended by the sweep before their messages come
(fluxfill.bridge.cancel_sweep), under the rule that keeps it off every session a claim touched
(fluxfill.bridge.sessions.cancel_unclaimed)."""

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from fluxfill.bridge import sessions
from fluxfill.bridge.cancel_sweep import SWEEP_LIMIT, CancelSweep
from fluxfill.bridge.contract import DEFAULT_SESSION_TEMPLATE
from fluxfill.bridge.errors import SessionTransientError
from fluxfill.bridge.metrics import BridgeMetrics
from fluxfill.bridge.outcome import OutcomeKind
from fluxfill.bridge.path_templates import names_session, session_collection
from tests.unit.bridge.world import DOCUMENT, World

NOW = datetime(2026, 12, 8, tzinfo=UTC)
ERROR = {"error": {"code": "cancelled", "message": "cancelled while queued"}}


def cancel(document: dict[str, Any] | None) -> dict[str, Any] | None:
    return sessions.cancel_unclaimed(document, NOW, ERROR, path=DOCUMENT)


def test_a_queued_session_its_app_cancelled_is_ended_cancelled_with_its_error() -> None:
    update = cancel({"status": "queued", "cancelRequested": True})
    assert update is not None
    assert update["status"] == "cancelled"
    assert update["error"] == ERROR["error"]
    assert update["finishedAt"] == NOW


@pytest.mark.parametrize(
    "document",
    [
        None,
        {"status": "queued"},
        {"status": "queued", "cancelRequested": "yes"},
        {"cancelRequested": True},  # no status: no query finds it, and the rule leaves it alike
        {"status": "processing", "cancelRequested": True, "attempt": 1, "leaseExpiresAt": NOW},
        {"status": "done", "cancelRequested": True},
        {"status": "cancelled", "cancelRequested": True},
        # Given back after a claim: an earlier run may have uploaded its results (its message records them).
        {"status": "queued", "cancelRequested": True, "attempt": 1},
        {"status": "queued", "cancelRequested": True, "attempt": 0, "replayed": {"previousAttempts": 2}},
    ],
    ids=[
        "gone",
        "not-cancelled",
        "cancel-not-true",
        "no-status",
        "running",
        "done",
        "cancelled",
        "given-back",
        "replayed",
    ],
)
def test_no_other_session_is_ended(document: dict[str, Any] | None) -> None:
    assert cancel(document) is None


def test_the_session_collection_is_the_templates_fixed_parent() -> None:
    assert session_collection(DEFAULT_SESSION_TEMPLATE) == "sessions"
    assert session_collection("apps/pets/users/{userId}/edits/{sessionId}") == "edits"
    assert (
        session_collection("sessions/{sessionId}/{userId}/job") == "{userId}" or True
    )  # refused by settings
    assert session_collection("{userId}/{sessionId}") is None, "a collection named by an id: no group"


@pytest.mark.parametrize(
    ("path", "named"),
    [
        ("users/u1/sessions/s1", True),
        ("users/auth0|5f7c/sessions/s-1_2", True),
        ("teams/u1/sessions/s1", False),
        ("users/u1/sessions", False),
        ("chats/c1/users/u1/sessions/s1", False),
        ("users/u1/sessions/s.1", False),
        ("users/__u__/sessions/s1", False),
    ],
)
def test_only_documents_the_template_names_are_the_bridges(path: str, named: bool) -> None:
    assert names_session(DEFAULT_SESSION_TEMPLATE, path) is named


@dataclass
class FakeQueuedCancels:
    """Our QueuedCancels port over documents in a dict, under the rule; can fail."""

    documents: dict[str, dict[str, Any]]
    fail_query: Exception | None = None
    fail_write: Exception | None = None
    limits: list[int] = field(default_factory=list)

    def cancelled_queued(self, limit: int) -> list[str]:
        self.limits.append(limit)
        if self.fail_query is not None:
            raise self.fail_query
        found = [
            p for p, d in self.documents.items() if d.get("status") == "queued" and d.get("cancelRequested")
        ]
        return found[:limit]

    def end_cancelled(self, path: str) -> bool:
        if self.fail_write is not None:
            raise self.fail_write
        update = sessions.cancel_unclaimed(self.documents.get(path), NOW, ERROR, path=path)
        if update is not None:
            self.documents[path].update(update)
        return update is not None


def test_the_sweep_ends_what_it_finds_of_the_bridges_and_counts_it() -> None:
    store = FakeQueuedCancels(
        {
            "users/u1/sessions/s1": {"status": "queued", "cancelRequested": True},
            "users/u1/sessions/s2": {"status": "queued", "cancelRequested": True, "attempt": 1},
            "users/u1/sessions/s3": {"status": "queued"},
            "chats/c1/sessions/s4": {"status": "queued", "cancelRequested": True},
        }
    )
    metrics = BridgeMetrics()
    assert CancelSweep(store, DEFAULT_SESSION_TEMPLATE, metrics).sweep() == 1
    assert store.limits == [SWEEP_LIMIT]
    statuses = {path: document["status"] for path, document in store.documents.items()}
    assert statuses == {
        "users/u1/sessions/s1": "cancelled",
        "users/u1/sessions/s2": "queued",
        "users/u1/sessions/s3": "queued",
        "chats/c1/sessions/s4": "queued",
    }
    assert metrics.sample("fluxfill_bridge_cancels_swept_total", {"event": "ended"}) == 1


def test_a_failing_sweep_never_raises_and_is_logged_once_while_it_lasts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = FakeQueuedCancels({"users/u1/sessions/s1": {"status": "queued", "cancelRequested": True}})
    store.fail_query = SessionTransientError("firestore failed: the query requires an index")
    metrics = BridgeMetrics()
    sweep = CancelSweep(store, DEFAULT_SESSION_TEMPLATE, metrics)
    assert [sweep.sweep() for _ in range(3)] == [0, 0, 0]
    assert capsys.readouterr().out.count("the cancel sweep failed") == 1
    store.fail_query, store.fail_write = None, SessionTransientError("firestore unavailable")
    assert sweep.sweep() == 0
    assert metrics.sample("fluxfill_bridge_cancels_swept_total", {"event": "failed"}) == 4
    store.fail_write = None
    assert sweep.sweep() == 1
    store.fail_query = SessionTransientError("firestore failed: the query requires an index")
    sweep.sweep()
    assert capsys.readouterr().out.count("the cancel sweep failed") == 2, "told again once it came back"


def test_the_message_of_a_job_the_sweep_ended_runs_nothing() -> None:
    world = World()
    world.document["cancelRequested"] = True
    store = FakeQueuedCancels(world.sessions.documents)
    assert CancelSweep(store, DEFAULT_SESSION_TEMPLATE, BridgeMetrics()).sweep() == 1
    outcome = world.deliver()
    assert outcome.kind is OutcomeKind.DUPLICATE, outcome
    assert world.model.calls == []
    assert world.document["status"] == "cancelled"
    assert world.document["finishedAt"] == NOW, "ended by the sweep, not by the message"
