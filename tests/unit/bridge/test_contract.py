"""The job message schema: what is accepted, and the specific refusal for everything else."""

import json

import pytest

from fluxfill.bridge.contract import (
    ErrorCode,
    InvalidJobError,
    JobMessage,
    id_problem,
    parse_job,
    recordable_id,
)
from fluxfill.inpaint.contract import MAX_PROMPT_BYTES


def parse(payload: object) -> JobMessage:
    return parse_job(json.dumps(payload).encode())


def test_minimal_message_gets_defaults() -> None:
    job = parse({"userId": "u1", "sessionId": "s1"})
    assert (job.prompt, job.steps, job.guidance, job.seed, job.priority) == ("", None, None, None, "bulk")


def test_full_message_is_kept() -> None:
    job = parse(
        {
            "userId": "u1",
            "sessionId": "s1",
            "prompt": "a hat",
            "steps": 20,
            "guidance": 30,
            "seed": 5,
            "priority": "urgent",
        }
    )
    assert (job.steps, job.guidance, job.seed, job.priority) == (20, 30.0, 5, "urgent")


def test_paths_are_built_from_the_validated_ids() -> None:
    job = parse({"userId": "u1", "sessionId": "s1"})
    assert job.paths("users/{userId}/sessions/{sessionId}/mask.png") == "users/u1/sessions/s1/mask.png"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"sessionId": "s1"}, "userId"),
        ({"userId": "../other", "sessionId": "s1"}, "userId"),
        ({"userId": "u1", "sessionId": "s/../../x"}, "sessionId"),
        ({"userId": "u1", "sessionId": "s1", "steps": 0}, "steps"),
        ({"userId": "u1", "sessionId": "s1", "steps": "20"}, "steps"),
        ({"userId": "u1", "sessionId": "s1", "steps": True}, "steps"),
        ({"userId": "u1", "sessionId": "s1", "seed": -1}, "seed"),
        ({"userId": "u1", "sessionId": "s1", "guidance": 1000}, "guidance"),
        ({"userId": "u1", "sessionId": "s1", "priority": "now"}, "priority"),
        ({"userId": "u1", "sessionId": "s1", "prompt": "x" * (MAX_PROMPT_BYTES + 1)}, "prompt"),
        ({"userId": "u1", "sessionId": "s1", "prompt": "é" * (MAX_PROMPT_BYTES // 2 + 1)}, "prompt"),
        ({"userId": "__u__", "sessionId": "s1"}, "userId"),
        ({"userId": "u1", "sessionId": "__x_y__"}, "sessionId"),
        ({"userId": "u1", "sessionId": "s1", "imagePath": "gs://x"}, "imagePath"),
    ],
)
def test_invalid_field_is_named_in_the_error(payload: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidJobError) as caught:
        parse(payload)
    assert caught.value.code is ErrorCode.INVALID_JOB
    assert str(caught.value).startswith("invalid job: ")
    assert field in str(caught.value)


def test_invalid_job_with_valid_ids_keeps_them_for_the_failed_record() -> None:
    with pytest.raises(InvalidJobError) as caught:
        parse({"userId": "u1", "sessionId": "s1", "steps": 0})
    assert caught.value.ids == ("u1", "s1")


def test_path_climbing_ids_are_not_kept() -> None:
    with pytest.raises(InvalidJobError) as caught:
        parse({"userId": "..", "sessionId": "s1", "steps": 0})
    assert caught.value.ids is None


@pytest.mark.parametrize("data", [b"", b"{", b"\x80\x81", b"null", b"[]"])
def test_non_object_data_is_malformed(data: bytes) -> None:
    with pytest.raises(InvalidJobError) as caught:
        parse_job(data)
    assert caught.value.code is ErrorCode.MALFORMED_MESSAGE


def test_prompt_limit_is_the_models_limit_in_utf8_bytes() -> None:
    """One limit in one place: a prompt the bridge accepts is never refused by the model for its length."""
    assert parse({"userId": "u1", "sessionId": "s1", "prompt": "é" * (MAX_PROMPT_BYTES // 2)}).prompt
    assert parse({"userId": "u1", "sessionId": "s1", "prompt": "x" * MAX_PROMPT_BYTES}).prompt


def test_a_prompt_with_half_a_character_is_refused_in_a_sentence_the_session_can_hold() -> None:
    """An app that cuts its prompt at a length in UTF-16 units (JavaScript's `slice`) may cut an emoji in two,
    and JSON carries the half as `\\ud83d`. Refused before in the codec's own words ("'utf-8' codec can't
    encode character...: surrogates not allowed"), which said nothing of what to change."""
    data = b'{"userId": "u1", "sessionId": "s1", "prompt": "a dog in a hat \\ud83d"}'
    with pytest.raises(InvalidJobError) as caught:
        parse_job(data)
    assert caught.value.code is ErrorCode.INVALID_JOB
    assert caught.value.ids == ("u1", "s1"), "the session is recorded failed with the reason"
    message = str(caught.value)
    assert "prompt: Value error, holds U+D83D at character 15, half of a UTF-16 surrogate pair" in message
    assert message.encode("utf-8"), "UTF-8 the session document can hold"
    whole = b'{"userId": "u1", "sessionId": "s1", "prompt": "a dog in a hat \\ud83d\\udc36"}'
    assert parse_job(whole).prompt == "a dog in a hat \U0001f436", "a whole pair is one character"


@pytest.mark.parametrize("value", ["__u__", "____", "__a-b__", "", "a" * 129, "a/b", ".", ".."])
def test_ids_firestore_refuses_are_invalid(value: str) -> None:
    assert id_problem(value) is not None


@pytest.mark.parametrize("value", ["_", "__", "___", "__u", "u__", "a_b", "Xy-9", "a" * 128])
def test_ids_firestore_accepts_are_valid(value: str) -> None:
    assert id_problem(value) is None


# Auth uids of other systems, which Firebase custom tokens carry: Auth0, Cognito, an e-mail address, base64.
OTHER_AUTH_UIDS = [
    "auth0|5f7c8ec7c33c6c004bbafe82",
    "eu-west-1:3f1a9c2e-7b",
    "rex.owner+pets@example.org",
    "aGk=",
]


@pytest.mark.parametrize("uid", OTHER_AUTH_UIDS)
def test_a_user_id_from_another_auth_system_is_a_valid_user_but_not_a_valid_session(uid: str) -> None:
    job = parse({"userId": uid, "sessionId": "s1"})
    assert job.paths("users/{userId}/sessions/{sessionId}/mask.png") == f"users/{uid}/sessions/s1/mask.png"
    assert id_problem(uid, user=True) is None
    with pytest.raises(InvalidJobError) as caught:
        parse({"userId": "u1", "sessionId": uid})
    assert "sessionId" in str(caught.value)


@pytest.mark.parametrize(
    ("uid", "why", "recorded"),
    [
        (".", "would name another folder", False),
        ("..", "would name another folder", False),
        ("a/b", "an id is 1 to 128 of the characters", False),
        ("../b", "an id is 1 to 128 of the characters", False),
        ("a*", "an id is 1 to 128 of the characters", True),
        ("a?b", "an id is 1 to 128 of the characters", True),
        ("a[1]", "an id is 1 to 128 of the characters", True),
        ("a#b", "an id is 1 to 128 of the characters", True),
        ("a%2Fb", "an id is 1 to 128 of the characters", True),
        ("a b", "an id is 1 to 128 of the characters", False),
        ("a\nb", "an id is 1 to 128 of the characters", False),
        ("a\x1b[31mb", "an id is 1 to 128 of the characters", False),
        ("a\u00a0b", "an id is 1 to 128 of the characters", False),
        ("__u__", "reserved by Firestore", False),
        ("a" * 129, "an id is 1 to 128 of the characters", False),
    ],
)
def test_a_user_id_that_would_leave_its_folder_or_that_storage_reads_specially_is_refused(
    uid: str, why: str, recorded: bool
) -> None:
    """Refused; and the refusal is recorded on the session's document only where the id still names one
    document safely (the job's objects are never looked at)."""
    with pytest.raises(InvalidJobError) as caught:
        parse({"userId": uid, "sessionId": "s1", "steps": 0})
    assert "userId" in str(caught.value)
    assert why in str(caught.value)
    assert caught.value.ids == ((uid, "s1") if recorded else None)
    assert id_problem(uid, user=True) is not None


@pytest.mark.parametrize(
    "session", ["2026-12-07T10:00:00.000Z", "rex@example.org", "walk.42", "séance", "a" * 127 + ".", "1:2|3"]
)
def test_a_session_id_refused_for_its_characters_alone_keeps_its_ids_for_the_failed_record(
    session: str,
) -> None:
    """An app whose session ids are ISO times or carry a '.' had every job refused with no record: the session
    stayed queued for ever, and the app never heard why."""
    with pytest.raises(InvalidJobError) as caught:
        parse({"userId": "u1", "sessionId": session})
    assert caught.value.code is ErrorCode.INVALID_JOB
    assert caught.value.ids == ("u1", session)
    assert "sessionId: Value error, an id is 1 to 128 of the characters A-Z a-z 0-9 _ -" in str(caught.value)
    assert recordable_id(session)


def test_reserved_ids_are_not_kept_for_a_failed_record() -> None:
    """Firestore would refuse the failed record's path too: the job is only dead-lettered."""
    with pytest.raises(InvalidJobError) as caught:
        parse({"userId": "__u__", "sessionId": "s1"})
    assert caught.value.ids is None


# Hostile shapes json.loads itself chokes on (RecursionError, ValueError beyond JSONDecodeError): a message
# must still be a coded refusal, never an exception that sends it round until the dead-letter policy takes it.
@pytest.mark.parametrize(
    "data",
    [
        b"[" * 100_000,
        b'{"userId": "u1", "sessionId": "s1", "x": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001,
        b'{"userId": "u1", "sessionId": "s1", "seed": ' + b"9" * 5_000 + b"}",
    ],
)
def test_data_json_cannot_hold_is_malformed(data: bytes) -> None:
    with pytest.raises(InvalidJobError) as caught:
        parse_job(data)
    assert caught.value.code is ErrorCode.MALFORMED_MESSAGE
    assert len(str(caught.value)) < 300, "one sentence, not the data"


def test_a_field_given_twice_is_refused_not_taken_from_its_last_copy() -> None:
    """Parsers disagree on duplicate keys (first or last wins): the app and the bridge must not read one
    message as two different jobs."""
    with pytest.raises(InvalidJobError) as caught:
        parse_job(b'{"userId": "u1", "sessionId": "s1", "userId": "u2"}')
    assert caught.value.code is ErrorCode.MALFORMED_MESSAGE
    assert "userId" in str(caught.value)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_a_number_that_is_not_finite_is_named_as_such(literal: bytes) -> None:
    with pytest.raises(InvalidJobError) as caught:
        parse_job(b'{"userId": "u1", "sessionId": "s1", "guidance": ' + literal + b"}")
    assert caught.value.code is ErrorCode.MALFORMED_MESSAGE
    assert "finite" in str(caught.value)


def test_a_message_of_many_repeated_keys_is_refused_at_once() -> None:
    data = b'{"userId": "u1", "sessionId": "s1"' + b', "x": 1' * 200_000 + b"}"
    with pytest.raises(InvalidJobError) as caught:
        parse_job(data)
    assert caught.value.code is ErrorCode.MALFORMED_MESSAGE
