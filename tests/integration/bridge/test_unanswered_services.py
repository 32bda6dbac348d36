"""Every Firestore, Cloud Storage and Pub/Sub publish call of the bridge's adapters, against a server that
takes the connection and never answers (a half-open connection, a network that drops packets): each ends
within its bound, a transient error.

Google's clients gave a Firestore read up to 300 s with its retries (measured here: 269 s), a write 60 s, a
Storage request 60 s retried for 120 s (121 s measured), a publish 600 s (past 400 s measured): a claim, a
final write, a heartbeat's read, a job's downloads or its dead-lettering held its thread that long. The
emulators always answer; a listening socket that is never accepted from does not.
"""

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore, storage  # type: ignore[attr-defined]

from fluxfill.bridge.adapters import firestore_errors, pubsub
from fluxfill.bridge.adapters import storage as storage_adapter
from fluxfill.bridge.adapters.firestore import (
    FirestoreDeadLetterLedger,
    FirestoreRuntimeConfig,
    FirestoreSessions,
)
from fluxfill.bridge.adapters.parking_store import FirestoreParkingLot
from fluxfill.bridge.adapters.user_slots_store import FirestoreUserSlots
from fluxfill.bridge.contract import ErrorCode, JobStatus
from fluxfill.bridge.errors import RetryableError, RetryCause, SessionTransientError, StorageTransientError
from fluxfill.bridge.ports import JobRef, ObjectInfo, ParkedJob
from tests.support import unanswered_port

pytestmark = pytest.mark.integration

BOUND_S = 1.0
JOB = JobRef("users/u1/sessions/s1", "m1", "u1")
PARKED = ParkedJob("u1", "s1", b"{}", {}, "bulk", None, version=datetime.now(UTC))


class NoRequeue:
    def publish(self, data: bytes, attributes: Any, lane: str) -> None:
        raise AssertionError("nothing is published when Firestore never answered")


@pytest.fixture
def silent_firestore(monkeypatch: pytest.MonkeyPatch) -> Iterator[firestore.Client]:
    with unanswered_port() as port:
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{port}")
        monkeypatch.setattr(firestore_errors, "CALL_TIMEOUT_S", BOUND_S)
        yield firestore.Client(project="p", credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]


CALLS: dict[str, Callable[[firestore.Client], object]] = {
    "claim": lambda c: FirestoreSessions(c).claim(
        JOB, claim_id="c1", owner="localhost", lease_s=30, max_attempts=3
    ),
    "claim under a user limit": lambda c: FirestoreSessions(
        c, user_slots=FirestoreUserSlots(c, "slots")
    ).claim(JOB, claim_id="c1", owner="localhost", lease_s=30, max_attempts=3, max_per_user=2),
    "heartbeat": lambda c: FirestoreSessions(c).heartbeat(JOB, "c1", 30, None),
    "claim check": lambda c: FirestoreSessions(c).holds_claim(JOB, "c1"),
    "give back": lambda c: FirestoreSessions(c).release(JOB, "c1", "a reason", RetryCause.TRITON),
    "final write": lambda c: FirestoreSessions(c).finish(JOB, "c1", JobStatus.DONE, {}),
    "ledger read": lambda c: FirestoreDeadLetterLedger(c, "ledger").recorded("m1"),
    "ledger write": lambda c: FirestoreDeadLetterLedger(c, "ledger").record("m1", ErrorCode.INVALID_JOB),
    "runtime config": lambda c: FirestoreRuntimeConfig(c, "config/runtime").read(),
    "park": lambda c: FirestoreParkingLot(c, "parked", NoRequeue()).park(PARKED),
    "parked jobs": lambda c: FirestoreParkingLot(c, "parked", NoRequeue()).oldest("u1", 2),
    "parked users": lambda c: FirestoreParkingLot(c, "parked", NoRequeue()).users(),
    "release": lambda c: FirestoreParkingLot(c, "parked", NoRequeue()).release(PARKED),
    "user's slots": lambda c: FirestoreUserSlots(c, "slots").running("u1"),
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_a_call_firestore_never_answers_ends_within_its_bound_as_a_transient_error(
    silent_firestore: firestore.Client, call: Callable[[firestore.Client], object]
) -> None:
    started = time.monotonic()
    with pytest.raises(SessionTransientError, match="Deadline"):
        call(silent_firestore)
    # One attempt's bound (each attempt that gets no answer ends the call), with room for a slow machine.
    assert time.monotonic() - started < BOUND_S + 4


@pytest.fixture
def silent_storage(monkeypatch: pytest.MonkeyPatch) -> Iterator[storage_adapter.CloudStorageObjects]:
    with unanswered_port() as port:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        monkeypatch.setattr(storage_adapter, "CALL_TIMEOUT_S", BOUND_S)
        client = storage.Client(project="p", credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]
        yield storage_adapter.CloudStorageObjects(client, "bucket")


STORED = ObjectInfo("users/u1/sessions/s1/mask.png", 100, 1, "image/png", None)
STORAGE_CALLS: dict[str, Callable[[storage_adapter.CloudStorageObjects], object]] = {
    "metadata": lambda objects: objects.find(STORED.path),
    "listing": lambda objects: objects.find("users/u1/sessions/s1/original.*"),
    "download": lambda objects: objects.read(STORED),
    "upload": lambda objects: objects.create("users/u1/sessions/s1/edited.jpg", b"jpeg", "image/jpeg"),
}


@pytest.mark.parametrize("call", STORAGE_CALLS.values(), ids=STORAGE_CALLS.keys())
def test_a_storage_call_never_answered_ends_within_its_bound_as_a_transient_error(
    silent_storage: storage_adapter.CloudStorageObjects,
    call: Callable[[storage_adapter.CloudStorageObjects], object],
) -> None:
    started = time.monotonic()
    with pytest.raises(StorageTransientError, match="timed out"):
        call(silent_storage)
    assert time.monotonic() - started < BOUND_S + 4


@pytest.fixture
def silent_publisher(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    with unanswered_port() as port:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{port}")
        monkeypatch.setattr(pubsub, "PUBLISH_TIMEOUT_S", BOUND_S)
        yield pubsub.publisher_client(AnonymousCredentials())  # type: ignore[no-untyped-call]


PUBLISHES: dict[str, Callable[[Any], object]] = {
    "dead letter": lambda publisher: pubsub.PubSubDeadLetters(publisher, "projects/p/topics/dead").publish(
        b"{}", {}, ErrorCode.INVALID_JOB, "a reason"
    ),
    "released job": lambda publisher: pubsub.PubSubRequeue(
        publisher, {"bulk": "projects/p/topics/jobs"}
    ).publish(b"{}", {}, "bulk"),
}


@pytest.mark.parametrize("call", PUBLISHES.values(), ids=PUBLISHES.keys())
def test_a_publish_never_answered_ends_within_its_bound_as_a_transient_error(
    silent_publisher: Any, call: Callable[[Any], object]
) -> None:
    started = time.monotonic()
    with pytest.raises(RetryableError, match="Deadline Exceeded"):
        call(silent_publisher)
    assert time.monotonic() - started < BOUND_S + 4
