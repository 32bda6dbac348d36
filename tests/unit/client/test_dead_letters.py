"""A dead letter's description from its message and its session document."""

from dataclasses import dataclass
from typing import Any

import pytest

from fluxfill.client.dead_letters import DeadLetterQueue
from fluxfill.client.jobs import SessionRef, validated_job
from tests.unit.client.test_jobs import SessionsInTurn


@dataclass
class Message:
    data: bytes
    attributes: dict[str, str]
    message_id: str


@dataclass
class Received:
    message: Message
    ack_id: str
    delivery_attempt: int = 0


def described(session: dict[str, Any]) -> tuple[str, str]:
    queue = DeadLetterQueue.__new__(DeadLetterQueue)  # its constructor opens a Pub/Sub client
    queue._jobs = SessionsInTurn(session)  # type: ignore[assignment]
    job = validated_job(SessionRef("u1", "s1")).model_dump_json(exclude_none=True).encode()
    letter = queue._describe(Received(Message(job, {}, "m1"), "a1"))
    return letter.code, letter.reason


def test_a_dead_letter_takes_its_sessions_last_error() -> None:
    error = {"code": "corrupt_image", "message": "the photo is not a readable image"}
    assert described({"status": "failed", "error": error}) == ("corrupt_image", error["message"])


@pytest.mark.parametrize("error", ["boom", ["corrupt_image"], 3])
def test_a_session_error_of_another_shape_is_read_as_none(error: object) -> None:
    """It failed `dlq list` with an unexpected error (AttributeError) for the whole queue."""
    assert described({"status": "failed", "error": error}) == (
        "unknown",
        "no reason recorded (delivered ? times)",
    )
