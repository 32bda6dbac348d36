"""The ack deadlines of pulled messages, kept by fluxfill.bridge.leases, on the Pub/Sub emulator."""

import threading
import time

import pytest
from google.api_core import exceptions as api

from fluxfill.bridge.leases import HeldMessage, Leases
from tests.integration.bridge.harness import JobSystem

pytestmark = pytest.mark.integration
EXTENSION_S = 2  # the shipped minimum is 10; short here so that a lapsed lease shows within seconds


def pull(jobs: JobSystem, wait_s: float) -> list[str]:
    """The ack ids of what another bridge would be given within `wait_s` (acked: taken for good)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            response = jobs.subscriber.pull(
                request={"subscription": jobs.subscription, "max_messages": 10}, timeout=1.0, retry=None
            )
        except api.DeadlineExceeded:
            continue
        if response.received_messages:
            ack_ids = [message.ack_id for message in response.received_messages]
            jobs.subscriber.acknowledge(subscription=jobs.subscription, ack_ids=ack_ids)
            return ack_ids
    return []


def hold_one(jobs: JobSystem, leases: Leases) -> HeldMessage:
    jobs.publisher.publish(jobs.topic, b"{}").result(timeout=10)
    response = jobs.subscriber.pull(subscription=jobs.subscription, max_messages=1, timeout=10)
    assert len(response.received_messages) == 1
    (held,) = leases.hold(jobs.subscription, [response.received_messages[0].ack_id])
    return held


def test_a_held_message_is_kept_until_its_maximum_lease_then_comes_back(jobs: JobSystem) -> None:
    leases = Leases(jobs.subscriber, EXTENSION_S, max_lease_s=3 * EXTENSION_S)
    stop = threading.Event()
    threading.Thread(target=leases.keep_alive, args=(stop,), daemon=True).start()
    try:
        hold_one(jobs, leases)
        assert pull(jobs, 2.5 * EXTENSION_S) == [], "a kept lease must not lapse"
        assert pull(jobs, 4 * EXTENSION_S) != [], "past its maximum lease the message must come back"
        assert leases.wait_until_settled(0), "a lease given up is no longer held"
    finally:
        stop.set()


def test_a_job_that_starts_late_is_kept_its_whole_maximum_lease_from_its_start(jobs: JobSystem) -> None:
    # A message that waited for a slot (or for Triton) before its job started: the wait must not eat the job's
    # own time, or the message comes back to another bridge while the job still runs here.
    leases = Leases(jobs.subscriber, EXTENSION_S, max_lease_s=3 * EXTENSION_S)
    stop = threading.Event()
    threading.Thread(target=leases.keep_alive, args=(stop,), daemon=True).start()
    try:
        held = hold_one(jobs, leases)
        time.sleep(2 * EXTENSION_S)  # waiting at the gate
        leases.started(held)
        assert pull(jobs, 2.5 * EXTENSION_S) == [], "kept past its maximum lease counted from the pull"
        assert pull(jobs, 4 * EXTENSION_S) != [], "past its maximum lease from its start it comes back"
    finally:
        stop.set()


def test_a_bridge_that_stops_extending_lets_its_messages_come_back(jobs: JobSystem) -> None:
    leases = Leases(jobs.subscriber, EXTENSION_S, max_lease_s=60)
    hold_one(jobs, leases)  # and nobody keeps it alive: a SIGKILLed or hung bridge
    assert pull(jobs, 3 * EXTENSION_S) != []


def test_a_nack_gives_the_message_back_at_once_and_an_ack_for_good(jobs: JobSystem) -> None:
    leases = Leases(jobs.subscriber, 60, max_lease_s=60)
    jobs.publisher.publish(jobs.topic, b"{}").result(timeout=10)
    response = jobs.subscriber.pull(subscription=jobs.subscription, max_messages=1, timeout=10)
    (nacked,) = leases.hold(jobs.subscription, [response.received_messages[0].ack_id])
    leases.nack(nacked)
    assert leases.wait_until_settled(0)
    response = jobs.subscriber.pull(subscription=jobs.subscription, max_messages=1, timeout=5)
    (acked,) = leases.hold(jobs.subscription, [response.received_messages[0].ack_id])
    leases.ack(acked)
    assert pull(jobs, 1.5 * EXTENSION_S) == []


def test_a_nack_with_a_delay_gives_the_message_back_only_after_it(jobs: JobSystem) -> None:
    leases = Leases(jobs.subscriber, 60, max_lease_s=60)
    nacked = hold_one(jobs, leases)
    leases.nack(nacked, after_s=4)
    assert leases.wait_until_settled(0)
    assert pull(jobs, 2.5) == [], "not back before its delay"
    assert pull(jobs, 6) != [], "back after it"
