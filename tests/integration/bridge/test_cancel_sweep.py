"""Queued jobs their app cancelled, ended by the bridges' sweep before their messages are taken (real
emulators, a real bridge and tritonserver): the app sees `cancelled` at once, not after the queue."""

import uuid

import pytest

from fluxfill.bridge.adapters.cancels_store import CANCELLED_QUEUED, FirestoreQueuedCancels
from fluxfill.client.local_server import LocalTritonServer
from tests.integration.bridge.harness import JobSystem, is_terminal, running_bridge, wait_until

pytestmark = pytest.mark.integration


def test_the_query_finds_queued_sessions_their_app_cancelled_in_every_users_collection(
    jobs: JobSystem,
) -> None:
    group = f"edits{uuid.uuid4().hex[:8]}"  # a collection id of this test's own
    documents = {
        f"users/u1/{group}/s1": {"status": "queued", "cancelRequested": True},
        f"users/u2/{group}/s2": {"status": "queued", "cancelRequested": True, "petName": "Rex"},
        f"users/u1/{group}/s3": {"status": "queued"},
        f"users/u1/{group}/s4": {"status": "processing", "cancelRequested": True},
        f"users/u1/{group}/s5": {"status": "done", "cancelRequested": True},
        f"users/u1/{group}x/s6": {"status": "queued", "cancelRequested": True},
    }
    for path, fields in documents.items():
        jobs.db.document(path).set(fields)
    store = FirestoreQueuedCancels(jobs.db, group)
    assert sorted(store.cancelled_queued(limit=10)) == [f"users/u1/{group}/s1", f"users/u2/{group}/s2"]
    assert len(store.cancelled_queued(limit=1)) == 1
    assert store.end_cancelled(f"users/u2/{group}/s2")
    assert not store.end_cancelled(f"users/u1/{group}/s4"), "a running job is its run's to end"
    ended = jobs.db.document(f"users/u2/{group}/s2").get().to_dict() or {}
    assert (ended["status"], ended["error"]["code"], ended["petName"]) == ("cancelled", "cancelled", "Rex")
    assert store.cancelled_queued(limit=10) == [f"users/u1/{group}/s1"]


def test_a_queued_job_its_app_cancels_ends_before_its_message_is_taken(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    """The job's message comes after the cancel (a queue ahead of it): its session is `cancelled` within a
    sweep of the cancel, and the message, when taken, runs nothing."""
    user, session = jobs.new_job()
    with running_bridge(jobs.settings(flux_server.grpc_url, cancel_sweep_s=0.2)) as bridge:
        jobs.document(user, session).update({"cancelRequested": True})
        document = jobs.wait_for(user, session, is_terminal, timeout_s=10)
        assert document["status"] == "cancelled"
        assert document["error"] == {"code": "cancelled", "message": CANCELLED_QUEUED}
        jobs.publish({"userId": user, "sessionId": session, "steps": 2})
        wait_until(lambda: bridge.counted("duplicate") == 1)
        assert (bridge.counted("done"), bridge.counted("cancelled")) == (0, 0)
    assert jobs.session(user, session)["finishedAt"] == document["finishedAt"], "ended once"
