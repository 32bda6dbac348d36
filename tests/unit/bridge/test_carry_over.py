"""A job the bridge gives back on its subscription's last deliveries is published anew, not dead-lettered by
Pub/Sub unclaimed; a copy of a running job's own message is that run's, not a duplicate."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from fluxfill.bridge.carry_over import CarryOver
from fluxfill.bridge.contract import (
    CARRIED_OVER_ATTRIBUTE,
    FIRST_PUBLISHED_ATTRIBUTE,
    ORIGINAL_MESSAGE_ID_ATTRIBUTE,
)
from fluxfill.bridge.errors import RetryCause
from fluxfill.bridge.metrics import BridgeMetrics
from fluxfill.bridge.outcome import Delivery, Outcome, OutcomeKind
from fluxfill.bridge.settle import should_ack
from tests.unit.bridge.fakes import FakeDeadLetters, FakeRequeue
from tests.unit.bridge.test_claims import run_in_background, wait_for_steps
from tests.unit.bridge.world import SESSION, USER, World, settings

POLICY = 10  # the subscription's max_delivery_attempts
FIRST = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)


def carrying(world: World, requeue: FakeRequeue | None = None) -> FakeRequeue:
    """Give the world a carry-over under a POLICY-attempt subscription; returns its topic."""
    requeue = requeue or FakeRequeue()
    world.carry_over = CarryOver(requeue, POLICY, world.metrics)
    return requeue


def carried_count(world: World, why: str) -> float:
    return world.metrics.sample("fluxfill_bridge_carried_over_total", {"why": why})


def test_a_retry_on_the_subscriptions_last_two_deliveries_is_published_anew_and_acked() -> None:
    world = World(readiness=True)
    world.model.ready = False
    world.readiness.check()  # type: ignore[union-attr]
    topic = carrying(world)
    outcomes = [world.deliver(attempt=attempt) for attempt in (None, 1, POLICY - 2, POLICY - 1, POLICY)]
    assert {outcome.kind for outcome in outcomes} == {OutcomeKind.RETRY}, "the model is not ready"
    assert world.acked == [False, False, False, True, True]
    assert [lane for _, _, lane in topic.published] == ["bulk", "bulk"]
    data, attributes, _ = topic.published[0]
    assert json.loads(data) == {"userId": USER, "sessionId": SESSION}
    assert attributes[ORIGINAL_MESSAGE_ID_ATTRIBUTE] == "m1"
    assert carried_count(world, "retry") == 2


def test_the_copy_keeps_the_first_message_id_and_publish_time_and_counts_its_carry_overs() -> None:
    topic = FakeRequeue()
    carry = CarryOver(topic, POLICY, BridgeMetrics())
    data = json.dumps({"userId": USER, "sessionId": SESSION, "priority": "urgent"}).encode()
    original = Delivery(data, "m1", {"app": "pets"}, publish_time=FIRST, delivery_attempt=POLICY)
    assert carry.instead_of_giving_back(original, "not_ready")
    _, first_copy, lane = topic.published[0]
    assert lane == "urgent"
    assert first_copy == {
        "app": "pets",
        ORIGINAL_MESSAGE_ID_ATTRIBUTE: "m1",
        CARRIED_OVER_ATTRIBUTE: "1",
        FIRST_PUBLISHED_ATTRIBUTE: FIRST.isoformat(),
    }
    copy = Delivery(data, "m2", first_copy, FIRST + timedelta(hours=1), delivery_attempt=POLICY - 1)
    assert copy.original_message_id == "m1"
    assert carry.instead_of_giving_back(copy, "busy")
    _, second_copy, _ = topic.published[1]
    assert second_copy == {**first_copy, CARRIED_OVER_ATTRIBUTE: "2"}, "first id and time kept, counted"


@pytest.mark.parametrize("stated", ["x", "-3", ""])
def test_an_unreadable_carry_over_count_starts_again(stated: str) -> None:
    topic = FakeRequeue()
    delivery = Delivery(b"{}", "m1", {CARRIED_OVER_ATTRIBUTE: stated}, delivery_attempt=POLICY)
    assert CarryOver(topic, POLICY, BridgeMetrics()).instead_of_giving_back(delivery, "stopping")
    assert topic.published[0][1][CARRIED_OVER_ATTRIBUTE] == "1"


def test_a_failed_publish_gives_the_job_back_as_meant() -> None:
    world = World(readiness=True)
    world.model.ready = False
    world.readiness.check()  # type: ignore[union-attr]
    carrying(world, FakeRequeue(broken=True))
    world.deliver(attempt=POLICY)
    assert world.acked == [False], "nacked: Pub/Sub's dead-lettering stays the backstop"


def test_a_retry_after_a_bug_is_left_to_pub_subs_dead_lettering() -> None:
    """A message that meets a bug every time is what the subscription's own count is for."""
    topic = FakeRequeue()
    carry = CarryOver(topic, POLICY, BridgeMetrics())
    delivery = Delivery(b"{}", "m1", delivery_attempt=POLICY)
    bug = Outcome.retry(RetryCause.INTERNAL_ERROR, "internal error", may_carry_over=False)
    assert should_ack(bug, delivery, FakeDeadLetters(), carry) is False
    outage = Outcome.retry(RetryCause.TRITON, "Triton is unreachable")
    assert should_ack(outage, delivery, FakeDeadLetters(), carry) is True
    assert len(topic.published) == 1


def test_the_handlers_own_bug_is_not_carried_over() -> None:
    world = World()
    topic = carrying(world)
    world.handler._handle = lambda _delivery: 1 / 0  # type: ignore[method-assign,assignment,return-value]
    outcome = world.deliver(attempt=POLICY)
    assert (outcome.kind, world.acked, topic.published) == (OutcomeKind.RETRY, [False], [])


def test_a_carried_copy_of_the_running_message_is_that_runs_not_a_duplicate() -> None:
    """Carried over while its run goes on elsewhere (the first message pushed again, or pulled again after a
    lost lease), the copy is all that is left of the job should the run die: dropped as a duplicate and with
    the first message acked, the job would be lost. Under its first message's id it is that run's message:
    given back while the run lives, claimed once the run's lease lapses."""
    world = World(instance_id="localhost")
    world.model.step_s = 0.02
    twin = world.another_bridge(instance_id="localhost")
    thread, outcomes = run_in_background(world, steps=30, message_id="m1")
    wait_for_steps(world)
    copy = world.deliver(handler=twin, message_id="m2", attributes={ORIGINAL_MESSAGE_ID_ATTRIBUTE: "m1"})
    other = world.deliver(handler=twin, message_id="m3")
    thread.join()
    assert copy.kind is OutcomeKind.RETRY, "the running message's own copy comes back"
    assert other.kind is OutcomeKind.DUPLICATE, "another message of a running job is not needed"
    assert outcomes[0].kind is OutcomeKind.DONE  # type: ignore[attr-defined]
    assert world.document["messageId"] == "m1"


def test_a_carried_copy_claims_the_job_under_the_first_message_id() -> None:
    world = World()
    outcome = world.deliver(message_id="m9", attributes={ORIGINAL_MESSAGE_ID_ATTRIBUTE: "m1"})
    assert (outcome.kind, world.document["messageId"]) == (OutcomeKind.DONE, "m1")


def test_carrying_over_needs_the_topic_to_publish_to() -> None:
    with pytest.raises(ValidationError, match="FLUXFILL_BRIDGE_TOPIC"):
        settings(subscription_max_delivery_attempts=POLICY)
    chosen = settings(subscription_max_delivery_attempts=POLICY, topic="jobs")
    assert chosen.subscription_max_delivery_attempts == POLICY
    with pytest.raises(ValidationError):
        settings(subscription_max_delivery_attempts=101, topic="jobs")
