"""Priority lanes and per-user fairness on the emulators: the bridge's claims, slots and lanes."""

import json
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore

from fluxfill.bridge import deferral
from fluxfill.bridge.adapters.firestore import FirestoreSessions
from fluxfill.bridge.adapters.user_slots_store import FirestoreUserSlots
from fluxfill.bridge.contract import DEFAULT_PARKED_JOBS_COLLECTION
from fluxfill.bridge.errors import SessionTransientError
from fluxfill.bridge.ports import ClaimKind, JobRef
from tests.integration.bridge.harness import (
    PROJECT,
    GatedModel,
    JobSystem,
    is_terminal,
    running_bridge,
    wait_until,
)

pytestmark = pytest.mark.integration
SLOTS = "fluxfillUserSlots"
LANES = ("bulk", "urgent")


def claim_until_decided(store: FirestoreSessions, ref: JobRef, limit: int) -> ClaimKind:
    """A claim, asked again while Firestore's contention leaves it undecided (the message would come back)."""
    while True:
        try:
            return store.claim(
                ref, claim_id=uuid.uuid4().hex, owner="b", lease_s=30, max_attempts=5, max_per_user=limit
            ).kind
        except SessionTransientError:
            continue


def test_the_per_user_count_holds_under_concurrent_bridges(jobs: JobSystem) -> None:
    """Ten claims of one user's ten jobs at once, through two bridges' clients: exactly the limit runs."""
    other_client = firestore.Client(project=PROJECT, credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]
    bridges = [
        FirestoreSessions(client, user_slots=FirestoreUserSlots(client, SLOTS))
        for client in (jobs.db, other_client)
    ]
    user = f"u{uuid.uuid4().hex[:8]}"
    refs = [JobRef(f"users/{user}/sessions/s{index}", f"m{index}", user) for index in range(10)]
    for ref in refs:
        jobs.db.document(ref.document).set({"status": "queued"})
    kinds: list[ClaimKind] = []
    threads = [
        threading.Thread(target=lambda i=i: kinds.append(claim_until_decided(bridges[i % 2], refs[i], 2)))
        for i in range(10)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Counter(kinds) == {ClaimKind.CLAIMED: 2, ClaimKind.USER_AT_LIMIT: 8}
    slots = jobs.db.document(f"{SLOTS}/{user}").get().to_dict()
    assert len(slots["claims"]) == 2
    waiting = [ref for ref in refs if jobs.db.document(ref.document).get().to_dict() == {"status": "queued"}]
    assert len(waiting) == 8, "a job over the limit is not written to: no attempt spent"

    # A bridge that crashed never gives its slots back: they lapse with their leases.
    def later() -> datetime:
        return datetime.now(UTC) + timedelta(seconds=31)

    later_bridge = FirestoreSessions(
        jobs.db, now=later, user_slots=FirestoreUserSlots(jobs.db, SLOTS, now=later)
    )
    assert claim_until_decided(later_bridge, waiting[0], 2) is ClaimKind.CLAIMED


def publish(jobs: JobSystem, key: tuple[str, str], topic: str | None = None, **fields: Any) -> None:
    message = {"userId": key[0], "sessionId": key[1], "prompt": key[1], **fields}
    jobs.publisher.publish(topic or jobs.topic, json.dumps(message).encode()).result(timeout=10)


def test_an_urgent_job_published_behind_a_bulk_backlog_runs_next(jobs: JobSystem) -> None:
    """One slot: bulk jobs queue on their subscription; an urgent one, published while the first runs,
    goes second."""
    bulk = [jobs.new_job() for _ in range(4)]
    urgent = jobs.new_job()
    model = GatedModel(bulk[0][1])
    settings = jobs.settings(
        "127.0.0.1:1", urgent_subscription=jobs.urgent_subscription_id, max_concurrent_jobs=1
    )
    with running_bridge(settings, model) as bridge:
        publish(jobs, bulk[0])
        wait_until(lambda: model.started == [bulk[0][1]])
        for key in bulk[1:]:
            publish(jobs, key)
        publish(jobs, urgent, jobs.urgent_topic, priority="urgent")
        # One job of each lane waits at the slot gate; the bulk one has waited longer.
        metrics = bridge.bridge.metrics
        wait_until(
            lambda: (
                [metrics.sample("fluxfill_bridge_jobs_waiting", {"lane": lane}) for lane in LANES] == [1, 1]
            )
        )
        model.release(bulk[0][1])
        for key in [*bulk, urgent]:
            jobs.wait_for(*key, is_terminal)
    assert model.started[:2] == [bulk[0][1], urgent[1]], model.started
    assert sorted(model.started) == sorted(session for _, session in [*bulk, urgent])
    assert jobs.session(*urgent)["model"]["priority"] == "urgent"


def test_one_users_flood_runs_one_at_a_time_while_another_users_job_goes_past_it(jobs: JobSystem) -> None:
    """Limit 1 over two slots: the flood holds one slot, the other user's job takes the other."""
    flooder = f"u{uuid.uuid4().hex[:8]}"
    flood = [jobs.new_job(user=flooder) for _ in range(5)]
    other = jobs.new_job()
    model = GatedModel(flood[0][1])
    settings = jobs.settings(
        "127.0.0.1:1",
        max_concurrent_jobs=2,
        max_jobs_in_flight_per_user=1,
        topic=jobs.topic_id,
        user_slots_collection=SLOTS,
    )
    with running_bridge(settings, model) as bridge:
        publish(jobs, flood[0])
        wait_until(lambda: model.started == [flood[0][1]])
        for key in [*flood[1:], other]:
            publish(jobs, key)
        jobs.wait_for(*other, is_terminal)
        assert [jobs.session(*key).get("status") for key in flood] == ["processing"] + ["queued"] * 4
        assert bridge.counted("defer") == 4, "each waiting job parked once, not passed round"
        parked = jobs.db.collection(DEFAULT_PARKED_JOBS_COLLECTION, flooder, "jobs").stream()
        assert sorted(document.id for document in parked) == sorted(session for _, session in flood[1:])
        model.release(flood[0][1])
        for key in flood:
            jobs.wait_for(*key, is_terminal)
    flood_sessions = {session for _, session in flood}
    assert all(len(running & flood_sessions) <= 1 for running in model.overlaps), model.overlaps
    assert all(jobs.session(*key)["attempt"] == 1 for key in [*flood, other]), "waiting spent no attempt"
    wait_until(lambda: (jobs.db.document(f"{SLOTS}/{flooder}").get().to_dict() or {}).get("claims") == {})
    assert list(jobs.db.collection(DEFAULT_PARKED_JOBS_COLLECTION, flooder, "jobs").stream()) == []


def test_a_busy_bridge_pulls_nothing_it_has_no_slot_for(jobs: JobSystem) -> None:
    """One slot each: while bridge a's job runs, every job published goes to bridge b (a streaming pull's
    flow control is best effort, and ignored by the emulator: a busy bridge's stream held jobs an idle one
    could have run)."""
    held = jobs.new_job()
    others = [jobs.new_job() for _ in range(6)]
    busy_model, idle_model = GatedModel(held[1]), GatedModel()
    with running_bridge(jobs.settings("127.0.0.1:1", max_concurrent_jobs=1, instance_id="a"), busy_model):
        publish(jobs, held)
        wait_until(lambda: busy_model.started == [held[1]])
        with running_bridge(jobs.settings("127.0.0.1:1", max_concurrent_jobs=1, instance_id="b"), idle_model):
            for key in others:
                publish(jobs, key)
            for key in others:
                assert jobs.wait_for(*key, is_terminal)["status"] == "done"
            assert busy_model.started == [held[1]], "the busy bridge took a job it had no slot for"
            assert sorted(idle_model.started) == sorted(session for _, session in others)
            busy_model.release(held[1])
            assert jobs.wait_for(*held, is_terminal)["owner"] == "a"


def test_a_job_of_a_user_found_at_the_limit_is_parked_without_waiting_for_a_slot(
    jobs: JobSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both slots busy, a lane's one message beyond them waits at the slot gate: a job of a user found at the
    limit a moment ago (the hint) is parked at once, leaving that place to a job that can run."""
    monkeypatch.setattr(deferral, "AT_LIMIT_HINT_S", 60.0)  # the moment: as long as the test needs
    user = f"u{uuid.uuid4().hex[:8]}"
    first, second, third = (jobs.new_job(user=user) for _ in range(3))
    other = jobs.new_job()
    model = GatedModel(first[1], other[1])
    settings = jobs.settings(
        "127.0.0.1:1",
        urgent_subscription=jobs.urgent_subscription_id,
        max_concurrent_jobs=2,
        max_jobs_in_flight_per_user=1,
        topic=jobs.topic_id,
        user_slots_collection=SLOTS,
    )
    with running_bridge(settings, model) as bridge:
        publish(jobs, first)
        wait_until(lambda: model.started == [first[1]])
        publish(jobs, second)  # the second slot's claim finds the user at the limit: parked, the hint noted
        wait_until(lambda: bridge.counted("defer") == 1)
        publish(jobs, other)
        wait_until(lambda: model.running == {first[1], other[1]})
        publish(jobs, third)
        wait_until(lambda: bridge.counted("defer") == 2)
        assert model.running == {first[1], other[1]}
        for key in (first, other):
            model.release(key[1])
        for key in (first, second, third, other):
            assert jobs.wait_for(*key, is_terminal)["status"] == "done"
    assert all(jobs.session(*key)["attempt"] == 1 for key in (first, second, third)), "parking spent none"
