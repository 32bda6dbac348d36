"""Per-user fairness: at most max_jobs_in_flight_per_user of a user's jobs run; the rest are parked."""

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from fluxfill.bridge import deferral, user_slots
from fluxfill.bridge.contract import DEFERRALS_ATTRIBUTE, FIRST_PUBLISHED_ATTRIBUTE, JobMessage, parse_job
from fluxfill.bridge.deferral import AtLimitHint, deferral_attributes, first_published
from fluxfill.bridge.metrics import BridgeMetrics
from fluxfill.bridge.outcome import Delivery, Outcome, OutcomeKind
from fluxfill.bridge.parking import Parking, parked
from fluxfill.bridge.ports import ParkedJob
from tests.unit.bridge.fakes import FakeParkingLot, FakeSessionStore
from tests.unit.bridge.world import USER, World, settings

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def test_a_slot_is_taken_only_below_the_limit() -> None:
    first = user_slots.take(None, "c1", NOW, 60, limit=2)
    second = user_slots.take(first, "c2", NOW, 60, limit=2)
    assert second is not None
    assert set(second["claims"]) == {"c1", "c2"}
    assert user_slots.take(second, "c3", NOW, 60, limit=2) is None
    assert user_slots.take(second, "c2", NOW, 60, limit=2) is not None, "a claim holding a slot keeps it"


def test_lapsed_slots_free_themselves_and_are_dropped_when_written() -> None:
    """A crashed bridge never gives its slot back: the slot lapses with the lease."""
    held = user_slots.take(None, "crashed", NOW, 60, limit=1)
    assert user_slots.take(held, "next", NOW + timedelta(seconds=59), 60, limit=1) is None
    later = user_slots.take(held, "next", NOW + timedelta(seconds=61), 60, limit=1)
    assert later is not None
    assert set(later["claims"]) == {"next"}


def test_a_slot_is_renewed_only_once_half_its_lease_is_spent() -> None:
    """A user's running jobs share one document; Firestore takes about one write a second to it."""
    held = user_slots.take(None, "c1", NOW, 60, limit=1)
    assert user_slots.renew(held, "c1", NOW + timedelta(seconds=20), 60) is None
    renewed = user_slots.renew(held, "c1", NOW + timedelta(seconds=40), 60)
    assert renewed is not None
    assert renewed["claims"]["c1"] == NOW + timedelta(seconds=100)
    assert user_slots.renew(held, "someone-else", NOW + timedelta(seconds=40), 60) is None
    assert user_slots.renew(held, "c1", NOW + timedelta(seconds=61), 60) is None, "a lapsed slot is gone"


def test_a_heartbeat_renews_the_slot_only_of_the_claim_the_session_still_holds() -> None:
    """A claim another one replaced (a takeover after a stall) keeps no slot alive: its user's next job would
    wait for it."""
    held = user_slots.take(None, "c1", NOW, 60, limit=1)
    later = NOW + timedelta(seconds=40)
    session = {"status": "processing", "claimId": "c1", "leaseExpiresAt": NOW + timedelta(seconds=60)}

    def slots_written(document: dict[str, object]) -> dict[str, object] | None:
        return user_slots.heartbeat(
            document, held, claim_id="c1", now=later, lease_s=60, progress=None, path="users/u/sessions/s"
        )[2]

    assert slots_written(session) is not None
    assert slots_written({**session, "claimId": "c2"}) is None


def test_dropping_a_slot_writes_only_when_the_claim_held_one() -> None:
    held = user_slots.take(None, "c1", NOW, 60, limit=2)
    assert user_slots.drop(held, "c2", NOW) is None
    assert user_slots.drop(held, None, NOW) is None
    assert user_slots.drop(held, "c1", NOW) == {"claims": {}}


@pytest.mark.parametrize("claims", [None, "not a map", {"c1": "not a time"}, {"c1": 5}])
def test_a_slot_document_of_any_shape_counts_only_live_times(claims: object) -> None:
    assert user_slots.live_claims({"claims": claims}, NOW) == {}
    assert user_slots.take({"claims": claims}, "c2", NOW, 60, limit=1) is not None


def limited_world(limit: int = 1, step_s: float = 0.02) -> World:
    world = World(max_jobs_in_flight_per_user=limit, topic="jobs")
    world.model.step_s = step_s
    return world


def deliver_in_background(world: World, **job: object) -> tuple[threading.Thread, list[Outcome]]:
    outcomes: list[Outcome] = []
    thread = threading.Thread(target=lambda: outcomes.append(world.deliver(**job)))  # type: ignore[arg-type]
    thread.start()
    return thread, outcomes


def wait_until_running(world: World, session: str) -> None:
    deadline = time.monotonic() + 10
    document = f"users/{USER}/sessions/{session}"
    while world.sessions.documents.get(document, {}).get("status") != "processing" or not world.model.calls:
        assert time.monotonic() < deadline, "the first job never started"
        time.sleep(0.01)


def first_job_running(world: World) -> tuple[threading.Thread, list[Outcome]]:
    """USER's job s1 running (40 steps) on a thread of its own; s2's photo and mask uploaded too."""
    world.upload(USER, "s1")
    world.upload(USER, "s2")
    thread, outcomes = deliver_in_background(world, sessionId="s1", steps=40, message_id="m1")
    wait_until_running(world, "s1")
    return thread, outcomes


def test_a_job_over_its_users_limit_is_parked_and_released_when_the_users_job_ends() -> None:
    world = limited_world(limit=1)
    thread, first = first_job_running(world)
    waiting = world.deliver(sessionId="s2", message_id="m2")
    assert waiting.kind is OutcomeKind.DEFER, waiting.reason
    assert "1 jobs running" in waiting.reason
    assert world.acked[-1] is True, "acked once parked"
    parked = world.parking_lot.parked[(USER, "s2")]
    assert (parked.lane, parked.attributes[DEFERRALS_ATTRIBUTE]) == ("bulk", "1")
    assert world.sessions.documents[f"users/{USER}/sessions/s2"]["status"] == "queued", "nothing written"
    assert "attempt" not in world.sessions.documents[f"users/{USER}/sessions/s2"], "no attempt spent"
    assert world.parking_lot.published == [], "its user's slot is still taken"
    thread.join()
    assert first[0].kind is OutcomeKind.DONE
    assert len(world.model.calls) == 1
    # The first job's end released it: published again, and it runs as the job's first attempt.
    assert [job.session for job in world.parking_lot.published] == ["s2"]
    assert world.parking_lot.parked == {}
    released = world.parking_lot.published[0]
    assert world.deliver(
        message_id="m3", attributes=dict(released.attributes), **json.loads(released.data)
    ).kind is (OutcomeKind.DONE)
    assert world.sessions.documents[f"users/{USER}/sessions/s2"]["attempt"] == 1
    assert world.sessions.user_slots[USER] == {"claims": {}}, "every slot given back"
    assert world.metrics.sample("fluxfill_bridge_parked_jobs_total", {"event": "released"}) == 1


@pytest.mark.parametrize("ended", ["cancelled", "deleted"])
def test_a_released_job_that_turns_out_ended_passes_its_slot_to_the_next_parked_one(ended: str) -> None:
    """The user's oldest parked job was cancelled (or its session deleted) while parked: released into the
    freed slot, it runs nothing, and the user's next parked job waited for another end or the parking sweep
    (30 s) with the slot free."""
    world = limited_world(limit=1)
    thread, _ = first_job_running(world)
    world.upload(USER, "s3")
    assert world.deliver(sessionId="s2", message_id="m2").kind is OutcomeKind.DEFER
    assert world.deliver(sessionId="s3", message_id="m3").kind is OutcomeKind.DEFER
    s2 = f"users/{USER}/sessions/s2"
    if ended == "cancelled":
        world.sessions.documents[s2]["cancelRequested"] = True
    else:
        del world.sessions.documents[s2]
    thread.join()
    [released] = world.parking_lot.published
    assert released.session == "s2", "the oldest first"
    # Parked for a minute: a deleted session's job is orphaned, its grace for a late document over.
    outcome = world.deliver(
        message_id="m4",
        attributes=dict(released.attributes),
        published_s_ago=60.0,
        **json.loads(released.data),
    )
    assert outcome.kind is {"cancelled": OutcomeKind.CANCELLED, "deleted": OutcomeKind.ORPHANED}[ended]
    assert [job.session for job in world.parking_lot.published] == ["s2", "s3"], "the slot passed on"


def test_a_deleted_sessions_job_parked_after_the_remade_sessions_own_does_not_take_its_place() -> None:
    """The user deletes session s2 while its job waits for a slot and makes it again under its id with a new
    prompt; its new job is parked, then a copy of the deleted session's job comes and would be parked over it
    (one parking per session). Released, that job is refused at its claim (made after its publication: a
    deleted session's), and the new session's job was gone with it: s2 stayed queued."""
    world = limited_world(limit=1)
    s2 = f"users/{USER}/sessions/s2"
    thread, _ = first_job_running(world)
    world.sessions.made[s2] = datetime.now(UTC)
    new = world.deliver(sessionId="s2", message_id="new", prompt="a blue hat")
    assert new.kind is OutcomeKind.DEFER, new.reason
    old = world.deliver(sessionId="s2", message_id="old", prompt="a red hat", published_s_ago=120.0)
    assert old.kind is OutcomeKind.DUPLICATE, old.reason
    assert "a job of its session first published later is parked" in old.reason
    assert world.acked[-2:] == [True, True]
    assert json.loads(world.parking_lot.parked[(USER, "s2")].data)["prompt"] == "a blue hat"
    thread.join()
    [released] = world.parking_lot.published
    again = world.deliver(message_id="m3", attributes=dict(released.attributes), **json.loads(released.data))
    assert again.kind is OutcomeKind.DONE, again.reason
    assert [call.prompt for call in world.model.calls][-1] == "a blue hat"
    assert world.sessions.documents[s2]["status"] == "done"


def test_a_copy_or_a_later_job_of_a_parked_session_takes_its_place_an_earlier_does_not() -> None:
    """A copy (the same first publication: a job parked again while its release is under way) and a later job
    replace the parked one; an earlier job is not kept."""
    lot = FakeParkingLot()
    assert lot.park(parked(*parked_job("s1", offset_s=10)))
    assert lot.park(parked(*parked_job("s1", offset_s=10))), "a copy: parked anew"
    assert not lot.park(parked(*parked_job("s1", offset_s=5))), "an earlier job: not kept"
    assert lot.parked[(USER, "s1")].first_published == NOW + timedelta(seconds=10)
    assert lot.park(parked(*parked_job("s1", offset_s=20)))
    assert lot.parked[(USER, "s1")].first_published == NOW + timedelta(seconds=20)


def test_another_users_job_is_not_held_back() -> None:
    world = limited_world(limit=1)
    world.upload("user2", "s9")
    thread, _ = first_job_running(world)
    other = world.deliver(userId="user2", sessionId="s9", message_id="m2")
    thread.join()
    assert other.kind is OutcomeKind.DONE


def test_an_urgent_job_is_parked_and_released_in_the_urgent_lane() -> None:
    world = limited_world(limit=1)
    thread, _ = first_job_running(world)
    world.deliver(sessionId="s2", message_id="m2", priority="urgent")
    thread.join()
    assert [job.lane for job in world.parking_lot.published] == ["urgent"]


def test_a_failed_park_is_a_nack_so_nothing_is_lost() -> None:
    world = limited_world(limit=1)
    world.parking_lot.broken = True
    thread, _ = first_job_running(world)
    outcome = world.deliver(sessionId="s2", message_id="m2")
    thread.join()
    assert outcome.kind is OutcomeKind.RETRY
    assert "could not be parked" in outcome.reason
    assert world.acked == [False, True], "the waiting message nacked, the running one acked"


def test_a_flood_costs_one_claim_transaction_and_one_parking_per_job() -> None:
    world = limited_world(limit=1)
    for index in range(1, 12):
        world.upload(USER, f"s{index}")
    thread, _ = deliver_in_background(world, sessionId="s1", steps=60, message_id="m1")
    wait_until_running(world, "s1")
    claims_before = world.sessions.claims
    outcomes = [world.deliver(sessionId=f"s{index}", message_id=f"m{index}") for index in range(2, 12)]
    thread.join()
    assert {outcome.kind for outcome in outcomes} == {OutcomeKind.DEFER}
    assert world.sessions.claims - claims_before == 1, "the rest were parked from the hint"
    assert [job.session for job in world.parking_lot.published] == ["s2"], "one slot freed: one released"
    assert len(world.parking_lot.parked) == 9


def parked_job(session: str, user: str = USER, offset_s: float = 0) -> tuple[JobMessage, Delivery]:
    data = json.dumps({"userId": user, "sessionId": session}).encode()
    return parse_job(data), Delivery(data, f"m-{session}", {}, NOW + timedelta(seconds=offset_s))


def test_a_park_looks_at_the_slots_again_so_a_slot_freed_meanwhile_is_not_left_idle() -> None:
    """The user's last job ended between the at-limit finding and the park, finding nothing parked."""
    lot, sessions = FakeParkingLot(), FakeSessionStore()
    parking = Parking(lot, sessions, 1, BridgeMetrics())
    parking.park(*parked_job("s1"))
    assert [job.session for job in lot.published] == ["s1"], "no slot taken: released at once"
    sessions.user_slots[USER] = user_slots.take(None, "running", datetime.now(UTC), 60, limit=1) or {}
    parking.park(*parked_job("s2"))
    assert list(lot.parked) == [(USER, "s2")], "the user's slot is taken: it stays parked"


def test_the_sweep_releases_oldest_first_as_many_as_each_user_has_free_slots() -> None:
    """What releases the jobs of users whose slots lapsed with a crashed bridge's leases."""
    lot, sessions = FakeParkingLot(), FakeSessionStore()
    for user, session, offset_s in [("u1", "late", 3), ("u1", "early", 1), ("u1", "mid", 2), ("u2", "x", 0)]:
        job, delivery = parked_job(session, user, offset_s)
        lot.park(parked(job, delivery))
    sessions.user_slots["u2"] = user_slots.take(None, "held", datetime.now(UTC), 60, limit=2) or {}
    sessions.user_slots["u2"] = (
        user_slots.take(sessions.user_slots["u2"], "held2", datetime.now(UTC), 60, 2) or {}
    )
    assert Parking(lot, sessions, 2, BridgeMetrics()).sweep() == 2
    assert [job.session for job in lot.published] == ["early", "mid"]
    assert set(lot.parked) == {("u1", "late"), ("u2", "x")}


def test_a_release_lost_to_another_bridge_or_a_new_parking_publishes_nothing() -> None:
    lot = FakeParkingLot()
    parking = Parking(lot, FakeSessionStore(), 1, BridgeMetrics())
    lot.park(parked(*parked_job("s1")))
    seen = lot.oldest(USER, 1)[0]
    lot.park(parked(*parked_job("s1")))  # parked again meanwhile: a new version
    assert lot.release(seen) is False
    assert parking.release_free(USER) == 1, "the current version is released"
    assert lot.published[0].version != seen.version


def test_a_release_another_bridge_won_leaves_the_free_slot_to_the_next_parked_job() -> None:
    """Counted as ours, the lost release would use up the user's one free slot: the next job would wait
    for the sweep."""
    lot = FakeParkingLot()
    parking = Parking(lot, FakeSessionStore(), 1, BridgeMetrics())
    lot.park(parked(*parked_job("s1", offset_s=-20)))
    lot.park(parked(*parked_job("s2", offset_s=-10)))
    release = lot.release

    def another_bridge_releases_it_first(job: ParkedJob) -> bool:
        if not lot.published:
            release(job)  # the other bridge's
            return False
        return release(job)

    lot.release = another_bridge_releases_it_first  # type: ignore[method-assign]
    assert parking.release_free(USER) == 1
    assert [job.session for job in lot.published] == ["s1", "s2"]
    assert lot.parked == {}


def test_releasing_never_raises_when_firestore_is_away() -> None:
    lot = FakeParkingLot()
    parking = Parking(lot, FakeSessionStore(), 1, BridgeMetrics())
    lot.park(parked(*parked_job("s1")))
    lot.broken = True
    assert (parking.release_free(USER), parking.sweep()) == (0, 0)
    lot.broken = False
    assert parking.sweep() == 1


def test_without_a_limit_no_slot_is_kept() -> None:
    world = World()
    world.deliver()
    assert world.sessions.user_slots == {}


def test_the_limit_needs_the_topic_to_publish_released_jobs_to() -> None:
    with pytest.raises(ValidationError, match="FLUXFILL_BRIDGE_TOPIC"):
        settings(max_jobs_in_flight_per_user=2)


def test_an_urgent_subscription_is_pull_only() -> None:
    with pytest.raises(ValidationError, match="push mode"):
        settings(mode="push", push_auth=False, urgent_subscription="urgent")


def test_a_copy_keeps_the_first_publish_time_and_counts_its_deferrals() -> None:
    original = Delivery(b"{}", "m1", {"app": "x"}, publish_time=NOW)
    first = deferral_attributes(original)
    assert first == {DEFERRALS_ATTRIBUTE: "1", FIRST_PUBLISHED_ATTRIBUTE: NOW.isoformat()}
    copy = Delivery(b"{}", "m2", {**original.attributes, **first}, publish_time=NOW + timedelta(seconds=30))
    assert first_published(copy) == NOW, "queue time counts from the first publish"
    assert deferral_attributes(copy)[DEFERRALS_ATTRIBUTE] == "2"


@pytest.mark.parametrize(
    ("stated", "expected_offset_s"),
    [("not a time", 0), ((NOW + timedelta(hours=1)).isoformat(), 0), ("2026-12-03T11:59:00", -60)],
)
def test_a_stated_first_publish_time_only_moves_it_back(stated: str, expected_offset_s: int) -> None:
    delivery = Delivery(b"{}", "m", {FIRST_PUBLISHED_ATTRIBUTE: stated, DEFERRALS_ATTRIBUTE: "x"}, NOW)
    assert first_published(delivery) == NOW + timedelta(seconds=expected_offset_s)
    assert deferral_attributes(delivery)[DEFERRALS_ATTRIBUTE] == "1"


def test_the_hint_lapses_and_is_forgotten_when_a_job_of_the_user_ends() -> None:
    hint = AtLimitHint(hold_s=0.05)
    hint.note("u")
    assert hint.at_limit("u")
    assert not hint.at_limit("v")
    hint.forget("u")
    assert not hint.at_limit("u")
    hint.note("u")
    time.sleep(0.06)
    assert not hint.at_limit("u")


def job_delivery(session: str, user: str = USER) -> Delivery:
    return Delivery(json.dumps({"userId": user, "sessionId": session}).encode(), f"m-{session}", {}, NOW)


def test_a_job_of_a_user_found_at_the_limit_is_deferred_before_taking_a_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pull path asks this first: a flood's messages go back without a slot, a claim or a read. The hint
    held past the first job here: its end, not the hint's lapse, lets the user's next job through."""
    monkeypatch.setattr(deferral, "AT_LIMIT_HINT_S", 60.0)
    world = limited_world(limit=1)
    assert world.handler.defer_if_user_at_limit(job_delivery("s2")) is None, "no hint yet: through handle"
    thread, _ = first_job_running(world)
    assert world.deliver(sessionId="s2", message_id="m2").kind is OutcomeKind.DEFER  # the hint is noted
    claims, reads = world.sessions.claims, list(world.objects.reads)

    early = world.handler.defer_if_user_at_limit(job_delivery("s3"))

    assert early is not None
    assert early.kind is OutcomeKind.DEFER
    assert set(world.parking_lot.parked) == {(USER, "s2"), (USER, "s3")}
    assert (world.sessions.claims, world.objects.reads) == (claims, reads)
    assert world.handler.defer_if_user_at_limit(job_delivery("s4", user="someone-else")) is None
    assert world.handler.defer_if_user_at_limit(Delivery(b"not json", "m-bad", {}, NOW)) is None
    thread.join()
    assert world.handler.defer_if_user_at_limit(job_delivery("s5")) is None, "the user's job ended here"
    assert world.metrics.sample("fluxfill_bridge_jobs_total", {"outcome": "defer"}) == 2


def test_without_a_limit_nothing_is_deferred_early() -> None:
    assert World().handler.defer_if_user_at_limit(job_delivery("s1")) is None
