"""A dead letter or a job published again stays within Pub/Sub's limits whatever the original carried: a copy
over them would be refused on every try, the original nacked for good, never dead-lettered."""

from fluxfill.bridge.adapters.pubsub import (
    KEPT_ATTRIBUTES,
    MAX_ATTRIBUTES,
    MAX_DATA_BYTES,
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    TRUNCATED_ATTRIBUTE,
    TRUNCATED_DATA_BYTES,
    bounded_attributes,
    dead_letter_message,
)
from fluxfill.bridge.contract import DEAD_LETTER_CODE_ATTRIBUTE, DEAD_LETTER_REASON_ATTRIBUTE, ErrorCode


def full_attributes() -> dict[str, str]:
    """As many attributes as Pub/Sub allows a message, each at its largest."""
    return {
        f"k{index:03d}".ljust(MAX_KEY_BYTES, "k"): "v" * MAX_VALUE_BYTES for index in range(MAX_ATTRIBUTES)
    }


def test_a_dead_letter_of_a_message_at_every_limit_is_within_them_with_its_code_and_reason() -> None:
    reason = "é" * MAX_VALUE_BYTES  # two bytes each: cut at a character, not inside one
    data, attributes = dead_letter_message(
        b"x" * (MAX_DATA_BYTES + 1), full_attributes(), ErrorCode.MALFORMED_MESSAGE, reason
    )
    assert len(attributes) <= MAX_ATTRIBUTES
    assert all(0 < len(key.encode()) <= MAX_KEY_BYTES for key in attributes)
    assert all(len(value.encode()) <= MAX_VALUE_BYTES for value in attributes.values())
    assert attributes[DEAD_LETTER_CODE_ATTRIBUTE] == "malformed_message"
    assert attributes[DEAD_LETTER_REASON_ATTRIBUTE] == "é" * (MAX_VALUE_BYTES // 2)
    assert (len(data), attributes[TRUNCATED_ATTRIBUTE]) == (TRUNCATED_DATA_BYTES, str(MAX_DATA_BYTES + 1))


def test_a_payload_within_the_limit_is_dead_lettered_whole() -> None:
    data, attributes = dead_letter_message(b"x" * MAX_DATA_BYTES, {}, ErrorCode.INVALID_JOB, "bad")
    assert len(data) == MAX_DATA_BYTES
    assert TRUNCATED_ATTRIBUTE not in attributes


def test_keys_pub_sub_reserves_or_refuses_are_dropped_values_cut_and_the_bridges_own_win() -> None:
    attributes = {
        "googclient_x": "reserved",
        "": "empty key",
        "k" * (MAX_KEY_BYTES + 1): "key too long",
        DEAD_LETTER_CODE_ATTRIBUTE: "the app's own",
        "app": "kept",
        "long": "v" * (MAX_VALUE_BYTES + 5),  # a push envelope's attributes are only JSON
    }
    _, bounded = dead_letter_message(b"{}", attributes, ErrorCode.INVALID_JOB, "bad")
    assert bounded == {
        "app": "kept",
        "long": "v" * MAX_VALUE_BYTES,
        DEAD_LETTER_CODE_ATTRIBUTE: "invalid_job",
        DEAD_LETTER_REASON_ATTRIBUTE: "bad",
    }


def test_a_job_published_again_keeps_the_bridges_attributes_whatever_else_is_dropped() -> None:
    ours = {key: f"ours-{key}" for key in KEPT_ATTRIBUTES}
    bounded = bounded_attributes({**full_attributes(), **ours}, ours)
    assert len(bounded) <= MAX_ATTRIBUTES
    assert {key: bounded[key] for key in KEPT_ATTRIBUTES} == ours
