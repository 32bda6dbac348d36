"""What the entry points share: outcome to ack or nack, and the push envelope."""

import base64
import json

import pytest

from fluxfill.bridge.contract import ErrorCode
from fluxfill.bridge.dead_letters import OncePerMessage
from fluxfill.bridge.errors import PermanentJobError, RetryCause, SessionTransientError
from fluxfill.bridge.http_app import EnvelopeError, delivery_from_envelope
from fluxfill.bridge.outcome import Delivery, Outcome, OutcomeKind
from fluxfill.bridge.settle import should_ack
from tests.unit.bridge.fakes import FakeDeadLetters, FakeLedger

DELIVERY = Delivery(b"{oops", "m7", {"origin": "app"})
DEAD = Outcome(OutcomeKind.DEAD_LETTER, ErrorCode.MALFORMED_MESSAGE, "not JSON")


@pytest.mark.parametrize(
    ("kind", "acked"),
    [
        (OutcomeKind.DONE, True),
        (OutcomeKind.DUPLICATE, True),
        (OutcomeKind.FAILED, True),
        (OutcomeKind.CANCELLED, True),
        (OutcomeKind.RETRY, False),
    ],
)
def test_every_outcome_but_retry_is_acked(kind: OutcomeKind, acked: bool) -> None:
    cause = RetryCause.TRITON if kind is OutcomeKind.RETRY else None
    assert should_ack(Outcome(kind, cause=cause), DELIVERY, FakeDeadLetters()) is acked


def test_dead_letter_is_acked_only_once_published_with_its_code_and_origin() -> None:
    sink = FakeDeadLetters()
    assert should_ack(DEAD, DELIVERY, sink) is True
    data, attributes, code = sink.published[0]
    assert data == b"{oops"
    assert code is ErrorCode.MALFORMED_MESSAGE
    assert attributes == {"origin": "app", "fluxfillOriginalMessageId": "m7"}


def test_dead_letter_is_nacked_when_it_cannot_be_published() -> None:
    assert should_ack(DEAD, DELIVERY, FakeDeadLetters(broken=True)) is False
    assert should_ack(DEAD, DELIVERY, None) is False


def test_a_redelivered_message_is_dead_lettered_once_and_acked_each_time() -> None:
    sink, ledger = FakeDeadLetters(), FakeLedger()
    once = OncePerMessage(sink, ledger)
    assert [should_ack(DEAD, DELIVERY, once) for _ in range(3)] == [True, True, True]
    assert len(sink.published) == 1
    assert ledger.entries == {"m7": ErrorCode.MALFORMED_MESSAGE}
    other = Delivery(b"{oops", "m8")
    assert should_ack(DEAD, other, once) is True
    assert len(sink.published) == 2


def test_an_unreadable_ledger_lets_the_dead_letter_through() -> None:
    sink = FakeDeadLetters()
    once = OncePerMessage(sink, FakeLedger({"m7": ErrorCode.MALFORMED_MESSAGE}, unreadable=True))
    assert should_ack(DEAD, DELIVERY, once) is True
    assert len(sink.published) == 1


def test_an_unwritable_ledger_still_acks_the_published_dead_letter() -> None:
    sink = FakeDeadLetters()
    assert should_ack(DEAD, DELIVERY, OncePerMessage(sink, FakeLedger(unwritable=True))) is True
    assert len(sink.published) == 1


def test_a_dead_letter_that_cannot_be_published_is_not_recorded() -> None:
    ledger = FakeLedger()
    assert should_ack(DEAD, DELIVERY, OncePerMessage(FakeDeadLetters(broken=True), ledger)) is False
    assert ledger.entries == {}


def test_a_dead_letter_whose_end_is_not_recorded_is_nacked_and_recorded_on_its_redelivery() -> None:
    """Published, but the session's failed status not written (Firestore away): acked then, the session would
    stay `queued` for good. Nacked, the redelivery finds the dead letter in the ledger and writes the end."""
    sink, ledger, ends = FakeDeadLetters(), FakeLedger(), []

    def record_the_end() -> None:
        if not ends:
            ends.append("refused")
            raise SessionTransientError("firestore unavailable")
        ends.append("written")

    dead = Outcome(OutcomeKind.DEAD_LETTER, ErrorCode.INVALID_JOB, "steps: 0", finalize=record_the_end)
    once = OncePerMessage(sink, ledger)
    assert should_ack(dead, DELIVERY, once) is False
    assert should_ack(dead, DELIVERY, once) is True
    assert ends == ["refused", "written"]
    assert len(sink.published) == 1


def test_a_dead_letter_whose_end_firestore_refuses_is_acked() -> None:
    """No redelivery could write an end Firestore refuses (no room left in the document); the dead letter
    holds the reason."""

    def refused() -> None:
        raise PermanentJobError(ErrorCode.INVALID_JOB, "the document has no room")

    dead = Outcome(OutcomeKind.DEAD_LETTER, ErrorCode.INVALID_JOB, "steps: 0", finalize=refused)
    assert should_ack(dead, DELIVERY, FakeDeadLetters()) is True


def test_push_envelope_becomes_a_delivery() -> None:
    body = {
        "message": {
            "data": base64.b64encode(b'{"userId": "u"}').decode(),
            "messageId": "42",
            "publishTime": "2026-11-24T08:00:00.123456789Z",
            "attributes": {"a": "b"},
        },
        "deliveryAttempt": 3,
        "subscription": "projects/p/subscriptions/s",
    }
    delivery = delivery_from_envelope(json.dumps(body).encode())
    assert delivery.data == b'{"userId": "u"}'
    assert delivery.message_id == "42"
    assert delivery.attributes == {"a": "b"}
    assert delivery.delivery_attempt == 3
    assert delivery.publish_time is not None
    assert delivery.publish_time.year == 2026


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b"{}",
        b'{"message": {}}',
        b'{"message": {"data": "***", "messageId": "1"}}',
        b'{"message": {"data": "", "messageId": "1"}, "deliveryAttempt": Infinity}',
        b'{"message": {"data": "", "messageId": "1"}, "deliveryAttempt": NaN}',
        b'{"message": {"data": "", "messageId": "1", "publishTime": 5}}',
        b'{"message": {"data": "", "messageId": "1"}, "deliveryAttempt": 1' + b"0" * 5000 + b"}",
    ],
)
def test_a_body_that_is_no_envelope_is_refused(body: bytes) -> None:
    with pytest.raises(EnvelopeError, match="not a Pub/Sub push envelope"):
        delivery_from_envelope(body)


def test_a_jobs_data_pushed_unwrapped_is_refused_naming_the_subscriptions_setting() -> None:
    """A push subscription made with --push-no-wrapper sends the message's data alone: every job refused as
    no envelope, the cause left to guess."""
    with pytest.raises(EnvelopeError) as refused:
        delivery_from_envelope(b'{"userId": "u1", "sessionId": "s1", "prompt": "a cat"}')
    assert str(refused.value).startswith("not a Pub/Sub push envelope: the body is a job's data itself")
    assert "--push-no-wrapper" in str(refused.value)
