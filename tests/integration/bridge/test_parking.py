"""Parked jobs on the Firestore and Pub/Sub emulators: one parking per session, oldest first, each release
published once, a job parked again mid-release kept, a release that died half-way retried, and a bridge's
sweep running the parked jobs of a user whose slots lapsed."""

import json
import threading
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore

from fluxfill.bridge.adapters.parking_store import RELEASE_RETRY_S, FirestoreParkingLot
from fluxfill.bridge.adapters.pubsub import MAX_ATTRIBUTES, PubSubRequeue, RequeuePublishError
from fluxfill.bridge.contract import (
    BULK_LANE,
    DEFERRALS_ATTRIBUTE,
    FIRST_PUBLISHED_ATTRIBUTE,
    URGENT_LANE,
    parse_job,
)
from fluxfill.bridge.errors import RetryableError
from fluxfill.bridge.outcome import Delivery
from fluxfill.bridge.parking import parked
from fluxfill.bridge.ports import InferenceResult, ParkedJob
from fluxfill.bridge.settings import BridgeSettings
from tests.integration.bridge.harness import PROJECT, JobSystem, is_terminal, running_bridge
from tests.unit.bridge.fakes import AlwaysReady

pytestmark = pytest.mark.integration
PARKED = "fluxfillParkedJobs"
START = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def lot_of(jobs: JobSystem, client: firestore.Client | None = None, **kwargs: Any) -> FirestoreParkingLot:
    requeue = PubSubRequeue(jobs.publisher, {BULK_LANE: jobs.topic})
    return FirestoreParkingLot(client or jobs.db, PARKED, requeue, **kwargs)


def job(
    user: str, session: str, offset_s: float = 0, published: datetime = START, **attributes: str
) -> ParkedJob:
    """A parked job published `offset_s` after `published`."""
    data = json.dumps({"userId": user, "sessionId": session}).encode()
    return parked(
        parse_job(data), Delivery(data, f"m-{session}", attributes, published + timedelta(seconds=offset_s))
    )


def sessions_published(jobs: JobSystem) -> list[str]:
    return sorted(json.loads(message.data)["sessionId"] for message in jobs.pull_now(timeout_s=3))


def test_a_session_is_parked_once_and_a_users_jobs_come_out_oldest_first(jobs: JobSystem) -> None:
    lot = lot_of(jobs)
    for session, offset_s in [("late", 30), ("early", 10), ("mid", 20), ("early", 10)]:
        lot.park(job("u1", session, offset_s, app="x"))
    lot.park(job("u2", "other"))
    assert sorted(lot.users()) == ["u1", "u2"]
    oldest = lot.oldest("u1", 2)
    assert [parked.session for parked in oldest] == ["early", "mid"]
    assert oldest[0].attributes == {
        "app": "x",
        DEFERRALS_ATTRIBUTE: "1",
        FIRST_PUBLISHED_ATTRIBUTE: (START + timedelta(seconds=10)).isoformat(),
    }
    assert len(list(jobs.db.collection(PARKED, "u1", "jobs").stream())) == 3, "one parking per session"

    assert lot.release(oldest[0]) is True
    [message] = jobs.pull_now()
    assert (json.loads(message.data)["sessionId"], message.attributes["app"]) == ("early", "x")
    assert [parked.session for parked in lot.oldest("u1", 5)] == ["mid", "late"], "released is deleted"


def test_a_parked_job_is_replaced_by_a_copy_or_a_later_job_of_its_session_never_by_an_earlier(
    jobs: JobSystem,
) -> None:
    """An earlier job of a parked session (a deleted session's, its session made again under its id and that
    one's job parked) would take the parked job's place, be refused at its claim once released, and the
    session's own job would be gone. A copy replaces it, a release's mark included."""
    lot = lot_of(jobs)
    user = f"u{uuid.uuid4().hex[:8]}"
    reference = jobs.db.document(f"{PARKED}/{user}/jobs/s1")
    assert lot.park(job(user, "s1", 10, app="later")) is True
    reference.update({"releasing": datetime.now(UTC)})
    assert lot.park(job(user, "s1", 5, app="earlier")) is False
    assert json.loads((reference.get().to_dict() or {})["attributes"])["app"] == "later"
    assert lot.oldest(user, 1) == [], "the release's mark stands"
    assert lot.park(job(user, "s1", 10, app="copy")) is True
    [kept] = lot.oldest(user, 1)
    assert (kept.attributes["app"], kept.first_published) == ("copy", START + timedelta(seconds=10))
    assert lot.park(job(user, "s1", 20, app="later still")) is True
    assert [parked.attributes["app"] for parked in lot.oldest(user, 5)] == ["later still"]


def test_racing_releases_publish_each_parked_job_once(jobs: JobSystem) -> None:
    """Two bridges (two clients) release the same user's five jobs at once, each as many as it sees."""
    other = firestore.Client(project=PROJECT, credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]
    lots = [lot_of(jobs), lot_of(jobs, other)]
    for index in range(5):
        lots[0].park(job("u1", f"s{index}", index))
    won: list[bool] = []

    def release_all(lot: FirestoreParkingLot) -> None:
        seen = lot.oldest("u1", 5)
        won.extend(lot.release(parked) for parked in seen)

    threads = [threading.Thread(target=release_all, args=(lot,)) for lot in lots]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert won.count(True) == 5, won
    assert sessions_published(jobs) == [f"s{index}" for index in range(5)]
    assert lots[0].oldest("u1", 5) == []


class ParkingAgainOnPublish:
    """Our Requeue port: publishes nothing, parks the job again (its user still at the limit at the bridge
    that takes it), as can happen between a release's publish and its delete."""

    def __init__(self) -> None:
        self.lot: FirestoreParkingLot | None = None
        self.published: list[bytes] = []

    def publish(self, data: bytes, attributes: Mapping[str, str], lane: str) -> None:
        assert self.lot is not None
        self.published.append(data)
        self.lot.park(job("u1", json.loads(data)["sessionId"], 0, **attributes))


def test_a_job_parked_again_during_its_release_is_not_deleted_with_it(jobs: JobSystem) -> None:
    requeue = ParkingAgainOnPublish()
    lot = FirestoreParkingLot(jobs.db, PARKED, requeue)
    requeue.lot = lot
    lot.park(job("u1", "s1"))
    assert lot.release(lot.oldest("u1", 1)[0]) is True
    [again] = lot.oldest("u1", 1)
    assert again.attributes[DEFERRALS_ATTRIBUTE] == "2", "the new parking stands, unmarked"


def test_a_release_that_died_half_way_is_released_again_once_its_mark_lapses(jobs: JobSystem) -> None:
    lot = lot_of(jobs)
    lot.park(job("u1", "s1"))
    [seen] = lot.oldest("u1", 1)
    # Marked, as a release does before publishing; then the releasing bridge died.
    jobs.db.document(f"{PARKED}/u1/jobs/s1").update({"releasing": datetime.now(UTC)})
    assert lot.oldest("u1", 1) == [], "being released by another bridge"
    assert lot.release(seen) is False, "that version is another bridge's to publish"

    def later() -> datetime:
        return datetime.now(UTC) + timedelta(seconds=RELEASE_RETRY_S + 1)

    [lapsed] = lot_of(jobs, now=later).oldest("u1", 1)
    assert lot_of(jobs, now=later).release(lapsed) is True
    assert sessions_published(jobs) == ["s1"]


def limited_to_one(jobs: JobSystem, parking_sweep_s: float) -> BridgeSettings:
    """A bridge with no Triton of its own (an InstantModel runs) whose users run one job at a time."""
    return jobs.settings(
        "127.0.0.1:1",
        max_jobs_in_flight_per_user=1,
        topic=jobs.topic_id,
        parked_jobs_collection=PARKED,
        parking_sweep_s=parking_sweep_s,
    )


def test_a_bridge_sweeps_parked_jobs_of_users_with_free_slots_and_runs_them(jobs: JobSystem) -> None:
    """As after a crash: the job was parked, its user's slot lapsed, and no job of the user ends to release
    it. A running bridge's sweep publishes it, and it runs."""
    user, session = jobs.new_job()
    # Published after its session was made (one made after the job is another session's under its id).
    lot_of(jobs).park(job(user, session, published=datetime.now(UTC)))
    settings = limited_to_one(jobs, parking_sweep_s=0.5)
    with running_bridge(settings, InstantModel()) as bridge:
        document = jobs.wait_for(user, session, is_terminal)
        assert bridge.bridge.metrics.sample("fluxfill_bridge_parked_jobs_total", {"event": "released"}) == 1
    assert document["status"] == "done"
    assert document["attempt"] == 1
    assert list(jobs.db.collection(PARKED, user, "jobs").stream()) == []


def test_a_released_job_its_app_cancelled_passes_the_slot_to_the_users_next_parked_job(
    jobs: JobSystem,
) -> None:
    """The user's oldest parked job was cancelled while parked. A job of the user's ends and releases it; it
    runs nothing, and its slot goes to the next parked job at once (it waited for the parking sweep)."""
    user, running = jobs.new_job()
    _, cancelled = jobs.new_job(user=user)
    _, waiting = jobs.new_job(user=user)
    now = datetime.now(UTC)  # after the sessions were made (an earlier job is another session's)
    lot_of(jobs).park(job(user, cancelled, published=now))
    lot_of(jobs).park(job(user, waiting, offset_s=1, published=now))
    jobs.document(user, cancelled).update({"cancelRequested": True})
    settings = limited_to_one(jobs, parking_sweep_s=600)
    with running_bridge(settings, InstantModel()):
        jobs.publish({"userId": user, "sessionId": running})
        assert jobs.wait_for(user, running, is_terminal)["status"] == "done"
        assert jobs.wait_for(user, waiting, is_terminal, timeout_s=20)["status"] == "done"
    assert jobs.session(user, cancelled)["status"] == "cancelled"
    assert list(jobs.db.collection(PARKED, user, "jobs").stream()) == []


class InstantModel(AlwaysReady):
    """Our InpaintModel port: returns the photo at once."""

    name = "instant"
    protocol = "fake"

    def infer(self, request: Any, *, on_progress: Any, control: Any) -> Any:
        on_progress(1, 1)
        return InferenceResult(request.image, request.seed)


class PublishingFailsOnce:
    """Our Requeue port: Pub/Sub away for the first publish, then `then`'s."""

    def __init__(self, then: PubSubRequeue) -> None:
        self._then = then
        self.calls = 0

    def publish(self, data: bytes, attributes: Mapping[str, str], lane: str) -> None:
        self.calls += 1
        if self.calls == 1:
            raise RequeuePublishError("cannot publish the job again: pub/sub unavailable")
        self._then.publish(data, attributes, lane)


def test_a_release_whose_publish_failed_leaves_the_job_ready_for_the_next_release(jobs: JobSystem) -> None:
    """Unmarked at once: left marked, the job would wait out RELEASE_RETRY_S (a minute) before any bridge
    released it again, its user's free slot idle meanwhile."""
    user = f"u{uuid.uuid4().hex[:8]}"
    lot = FirestoreParkingLot(
        jobs.db, PARKED, PublishingFailsOnce(PubSubRequeue(jobs.publisher, {BULK_LANE: jobs.topic}))
    )
    lot.park(job(user, "s1"))
    [seen] = lot.oldest(user, 1)
    with pytest.raises(RetryableError, match="pub/sub unavailable"):
        lot.release(seen)
    [again] = lot.oldest(user, 1)
    assert lot.release(again) is True
    assert sessions_published(jobs) == ["s1"]


def test_jobs_under_other_bridges_releases_do_not_hide_the_next_one(jobs: JobSystem) -> None:
    """The oldest jobs being released elsewhere (marked) are passed over; the next is found behind them."""
    user = f"u{uuid.uuid4().hex[:8]}"
    lot = lot_of(jobs)
    for index in range(4):
        lot.park(job(user, f"s{index}", index))
    for index in range(3):
        jobs.db.document(f"{PARKED}/{user}/jobs/s{index}").update({"releasing": datetime.now(UTC)})
    assert [parked.session for parked in lot.oldest(user, 1)] == ["s3"]


def test_a_job_published_again_keeps_the_bridges_attributes_and_goes_to_bulk_without_an_urgent_topic(
    jobs: JobSystem,
) -> None:
    """Released or carried over: an urgent job where no urgent topic is set goes to the bulk topic; beside as
    many of the app's attributes as Pub/Sub allows, the bridge's own are the ones kept."""
    requeue = PubSubRequeue(jobs.publisher, {BULK_LANE: jobs.topic})
    apps = {f"a{index:03d}": "x" for index in range(MAX_ATTRIBUTES)}
    ours = {DEFERRALS_ATTRIBUTE: "3", FIRST_PUBLISHED_ATTRIBUTE: START.isoformat()}
    requeue.publish(json.dumps({"userId": "u1", "sessionId": "s1"}).encode(), {**apps, **ours}, URGENT_LANE)
    [message] = jobs.pull_now()
    assert {key: message.attributes[key] for key in ours} == ours
    assert len(message.attributes) <= MAX_ATTRIBUTES
