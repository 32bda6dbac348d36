"""Compare-and-set on the Firestore emulator: the session's changes without transactions still give each
job exactly one claim, and a write never lands on a document other than the one it was decided from."""

import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore

from fluxfill.bridge.adapters.compare_and_set import ROUNDS, Known, compare_and_set
from fluxfill.bridge.adapters.firestore import FirestoreSessions
from fluxfill.bridge.adapters.user_slots_store import FirestoreUserSlots
from fluxfill.bridge.contract import JobStatus
from fluxfill.bridge.errors import SessionTransientError
from fluxfill.bridge.ports import ClaimKind, JobRef
from fluxfill.bridge.sessions import MAX_DOCUMENT_BYTES, document_bytes, name_bytes
from tests.integration.bridge.harness import PROJECT, JobSystem

pytestmark = pytest.mark.integration


def new_path() -> str:
    return f"users/u{uuid.uuid4().hex[:8]}/sessions/s{uuid.uuid4().hex[:8]}"


def test_racing_claims_of_one_job_through_two_clients_claim_it_once(jobs: JobSystem) -> None:
    """Twelve deliveries of a job claimed at once through two clients: one claims it, eleven find it busy."""
    other_client = firestore.Client(project=PROJECT, credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]
    bridges = [FirestoreSessions(jobs.db), FirestoreSessions(other_client)]
    path = new_path()
    jobs.db.document(path).set({"status": "queued", "prompt": "a hat"})
    start = threading.Barrier(12)
    kinds: list[ClaimKind] = []

    def claim(index: int) -> None:
        start.wait()
        store = bridges[index % 2]
        kinds.append(
            store.claim(
                JobRef(path, f"m{index}"), claim_id=f"c{index}", owner="localhost", lease_s=30, max_attempts=3
            ).kind
        )

    threads = [threading.Thread(target=claim, args=(index,)) for index in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Counter(kinds) == {ClaimKind.CLAIMED: 1, ClaimKind.BUSY: 11}
    document = jobs.db.document(path).get().to_dict() or {}
    assert (document["attempt"], document["prompt"]) == (1, "a hat"), "one attempt; the app's fields kept"


def test_a_write_between_the_read_and_the_write_makes_the_change_read_again(jobs: JobSystem) -> None:
    path = new_path()
    reference = jobs.db.document(path)
    reference.set({"status": "processing", "claimId": "c1", "note": "app"})
    seen: list[Mapping[str, Any] | None] = []

    def decide(document: Mapping[str, Any] | None, now: datetime) -> tuple[str, dict[str, Any]]:
        seen.append(document)
        if len(seen) == 1:  # another writer lands after our read: our write must not
            reference.update({"claimId": "c2"})
        return str((document or {}).get("claimId")), {"status": "done"}

    answer, _ = compare_and_set(jobs.db, path, "finish", decide, datetime.now)
    assert [dict(document or {}).get("claimId") for document in seen] == ["c1", "c2"]
    assert answer == "c2", "the answer comes from the document the write was decided on"
    assert reference.get().to_dict() == {"status": "done", "claimId": "c2", "note": "app"}


def test_a_document_deleted_between_the_read_and_the_write_is_decided_again_as_missing(
    jobs: JobSystem,
) -> None:
    """The app deletes the session while a change decides: the write's precondition fails (the emulator says
    FailedPrecondition; a NotFound is taken alike), a lost round like any other; decided again on no
    document, nothing is written."""
    path = new_path()
    reference = jobs.db.document(path)
    reference.set({"status": "processing", "claimId": "c1"})
    seen: list[Mapping[str, Any] | None] = []

    def decide(document: Mapping[str, Any] | None, now: datetime) -> tuple[bool, dict[str, Any] | None]:
        seen.append(document)
        if document is None:
            return False, None
        reference.delete()  # after our read
        return True, {"status": "done"}

    answer, after = compare_and_set(jobs.db, path, "finish", decide, datetime.now)
    assert (answer, after.fields) == (False, None)
    assert [document is None for document in seen] == [False, True]
    assert not reference.get().exists, "a session the app deleted stays deleted"


def test_a_missing_document_is_created_only_if_still_missing(jobs: JobSystem) -> None:
    path = new_path()
    reference = jobs.db.document(path)
    rounds = 0

    def decide(document: Mapping[str, Any] | None, now: datetime) -> tuple[bool, dict[str, Any]]:
        nonlocal rounds
        rounds += 1
        if document is None:
            reference.set({"status": "queued"})  # created by someone else after our read
        return document is not None, {"status": "processing"}

    assert compare_and_set(jobs.db, path, "claim", decide, datetime.now)[0] is True
    assert rounds == 2
    assert reference.get().to_dict() == {"status": "processing"}


def test_a_document_that_keeps_changing_is_a_retryable_error_and_nothing_of_ours_lands(
    jobs: JobSystem,
) -> None:
    path = new_path()
    reference = jobs.db.document(path)
    reference.set({"count": 0})

    def decide(document: Mapping[str, Any] | None, now: datetime) -> tuple[None, dict[str, Any]]:
        reference.update({"count": firestore.Increment(1)})
        return None, {"ours": True}

    with pytest.raises(SessionTransientError, match="kept changing"):
        compare_and_set(jobs.db, path, "renew the lease", decide, datetime.now)
    assert reference.get().to_dict() == {"count": ROUNDS}


def test_a_finish_replaces_the_maps_it_writes_and_keeps_every_other_field(jobs: JobSystem) -> None:
    """The terminal write sets `error` and `progress` as a whole: no key of an earlier error survives."""
    sessions = FirestoreSessions(jobs.db)
    path = new_path()
    reference = jobs.db.document(path)
    reference.set(
        {"status": "queued", "prompt": "a hat", "error": {"code": "retrying", "message": "m", "x": 1}}
    )
    ref = JobRef(path, "m1")
    assert (
        sessions.claim(ref, claim_id="c1", owner="localhost", lease_s=30, max_attempts=3).kind
        is ClaimKind.CLAIMED
    )
    assert sessions.finish(ref, "c1", JobStatus.FAILED, {"error": {"code": "model_error", "message": "no"}})
    document = reference.get().to_dict() or {}
    assert document["error"] == {"code": "model_error", "message": "no"}
    assert (document["status"], document["prompt"], document["progress"]) == (
        "failed",
        "a hat",
        {"step": 0, "total": None},
    )


def test_a_change_from_the_known_document_writes_without_reading_it(jobs: JobSystem) -> None:
    path = new_path()
    reference = jobs.db.document(path)
    reference.set({"status": "processing", "note": "as stored"})
    stored = reference.get()
    # Fields only the caller's memory holds: a decision made on them shows that nothing was read.
    known = Known({"status": "processing", "note": "as known"}, stored.update_time)
    seen: list[Mapping[str, Any] | None] = []

    def decide(document: Mapping[str, Any] | None, now: datetime) -> tuple[None, dict[str, Any]]:
        seen.append(document)
        return None, {"status": "done"}

    _, after = compare_and_set(jobs.db, path, "finish", decide, datetime.now, known=known)
    assert seen == [known.fields]
    assert reference.get().to_dict() == {"status": "done", "note": "as stored"}
    assert after == Known({"status": "done", "note": "as known"}, reference.get().update_time)


def test_a_known_document_changed_since_is_read_again_before_the_write(jobs: JobSystem) -> None:
    path = new_path()
    reference = jobs.db.document(path)
    reference.set({"status": "processing"})
    known = Known({"status": "processing"}, reference.get().update_time)
    reference.update({"cancelRequested": True})  # the app writes after our last look

    def decide(document: Mapping[str, Any] | None, now: datetime) -> tuple[bool, dict[str, Any]]:
        cancel = bool((document or {}).get("cancelRequested"))
        return cancel, {"status": "cancelled" if cancel else "done"}

    answer, _ = compare_and_set(jobs.db, path, "finish", decide, datetime.now, known=known)
    assert answer is True
    assert reference.get().to_dict() == {"status": "cancelled", "cancelRequested": True}


def test_an_answer_without_a_write_comes_from_a_read_not_from_memory(jobs: JobSystem) -> None:
    path = new_path()
    reference = jobs.db.document(path)
    reference.set({"claimId": "theirs"})
    known = Known({"claimId": "ours"}, reference.get().update_time)

    def decide(document: Mapping[str, Any] | None, now: datetime) -> tuple[str, None]:
        return str((document or {}).get("claimId")), None

    assert compare_and_set(jobs.db, path, "check", decide, datetime.now, known=known)[0] == "theirs"


def test_a_running_job_sees_the_apps_cancel_and_a_takeover_through_its_remembered_document(
    jobs: JobSystem,
) -> None:
    """The adapter's memory of its running job never hides another writer: the heartbeat after the app's
    cancel reports it, and a final write after another bridge's takeover records nothing."""
    sessions, other = FirestoreSessions(jobs.db), FirestoreSessions(jobs.db)
    path = new_path()
    reference = jobs.db.document(path)
    reference.set({"status": "queued"})
    ref = JobRef(path, "m1")
    assert (
        sessions.claim(ref, claim_id="c1", owner="a", lease_s=0.5, max_attempts=3).kind is ClaimKind.CLAIMED
    )
    assert not sessions.heartbeat(ref, "c1", 0.5, (1, 4)).cancel_requested
    reference.update({"cancelRequested": True})
    assert sessions.heartbeat(ref, "c1", 0.5, (2, 4)).cancel_requested
    reference.update({"cancelRequested": False})
    time.sleep(0.7)  # the lease lapses; another bridge takes the job over
    assert other.claim(ref, claim_id="c2", owner="b", lease_s=30, max_attempts=3).kind is ClaimKind.CLAIMED
    assert not sessions.finish(ref, "c1", JobStatus.DONE, {})
    assert not sessions.heartbeat(ref, "c1", 30, None).still_owner
    assert (reference.get().to_dict() or {})["claimId"] == "c2"
    assert other.holds_claim(ref, "c2")
    assert other.finish(ref, "c2", JobStatus.DONE, {})
    assert (reference.get().to_dict() or {})["status"] == "done"


def test_heartbeats_without_progress_read_and_write_only_a_due_renewal(jobs: JobSystem) -> None:
    """Every write reaches the app's listeners: a heartbeat with nothing new writes nothing, yet sees the
    app's cancel; one with progress, or once a sixth of the lease is spent, renews the lease."""
    sessions = FirestoreSessions(jobs.db)
    fresh, due = new_path(), new_path()
    for path in (fresh, due):
        jobs.db.document(path).set({"status": "queued"})
    fresh_ref, due_ref = JobRef(fresh, "m1"), JobRef(due, "m2")
    for ref, lease_s in ((fresh_ref, 60.0), (due_ref, 1.2)):
        claimed = sessions.claim(ref, claim_id="c1", owner="a", lease_s=lease_s, max_attempts=3)
        assert claimed.kind is ClaimKind.CLAIMED
    reference = jobs.db.document(fresh)
    claimed_at = reference.get().update_time
    beats = [sessions.heartbeat(fresh_ref, "c1", 60.0, None) for _ in range(3)]
    assert all(beat.still_owner and not beat.renewed for beat in beats)
    assert reference.get().update_time == claimed_at, "nothing new: nothing written"
    reference.update({"cancelRequested": True})
    cancelled_at = reference.get().update_time
    beat = sessions.heartbeat(fresh_ref, "c1", 60.0, None)
    assert beat.cancel_requested
    assert not beat.renewed
    assert reference.get().update_time == cancelled_at
    assert sessions.heartbeat(fresh_ref, "c1", 60.0, (1, 4)).renewed
    assert (reference.get().to_dict() or {})["progress"] == {"step": 1, "total": 4}

    lease_before = (jobs.db.document(due).get().to_dict() or {})["leaseExpiresAt"]
    time.sleep(0.3)  # over a sixth of its 1.2 s lease
    assert sessions.heartbeat(due_ref, "c1", 1.2, None).renewed
    assert (jobs.db.document(due).get().to_dict() or {})["leaseExpiresAt"] > lease_before


def test_freeing_a_slot_keeps_the_slot_another_bridge_took_since(jobs: JobSystem) -> None:
    """Two bridges' slots of one user: freeing ours changes the document as it is now; theirs is kept."""
    first, second = (
        FirestoreUserSlots(jobs.db, "fluxfillUserSlots"),
        FirestoreUserSlots(jobs.db, "fluxfillUserSlots"),
    )
    user = f"u{uuid.uuid4().hex[:8]}"
    assert first.take(user, "c1", 30, 2) is None
    assert second.take(user, "c2", 30, 2) is None
    assert first.running(user) == 2
    first.give_back(user, "c1")
    claims = (jobs.db.document(f"fluxfillUserSlots/{user}").get().to_dict() or {})["claims"]
    assert set(claims) == {"c2"}
    second.give_back(user, "c2")
    assert first.running(user) == 0


@pytest.mark.parametrize("status", ["done", "processing", "made again"])
def test_a_claim_refused_by_its_session_gives_its_users_slot_back(jobs: JobSystem, status: str) -> None:
    """The slot is taken first, then the session claimed: a session already ended (a copy of its message),
    running elsewhere, or made after the job was published (another session under its id) must not keep the
    slot, or the user's next job waits until it lapses."""
    store = FirestoreSessions(jobs.db, user_slots=FirestoreUserSlots(jobs.db, "fluxfillUserSlots"))
    user = f"u{uuid.uuid4().hex[:8]}"
    ended, next_job = f"users/{user}/sessions/ended", f"users/{user}/sessions/next"
    later = datetime.now(UTC) + timedelta(minutes=5)
    made_by = datetime.now(UTC) - timedelta(minutes=1) if status == "made again" else None
    if made_by is None:
        jobs.db.document(ended).set({"status": status, "claimId": "elsewhere", "leaseExpiresAt": later})
    else:
        jobs.db.document(ended).set({"status": "queued"})
    jobs.db.document(next_job).set({"status": "queued"})

    def claim(path: str, claim_id: str, made_by: datetime | None = None) -> ClaimKind:
        job = JobRef(path, f"m-{claim_id}", user)
        return store.claim(
            job, claim_id=claim_id, owner="b", lease_s=30, max_attempts=3, max_per_user=1, made_by=made_by
        ).kind

    refused = {"done": ClaimKind.FINISHED, "processing": ClaimKind.BUSY, "made again": ClaimKind.REMADE}
    assert claim(ended, "c1", made_by) is refused[status]
    assert claim(next_job, "c2") is ClaimKind.CLAIMED, "the refused claim kept the user's one slot"


def test_a_claim_tells_a_session_made_after_its_job_was_published_from_its_own(jobs: JobSystem) -> None:
    """Firestore's create time decides, not the app's fields nor its later writes: a document made after the
    job's latest time is another session's under its id (nothing written); one made before it is the job's,
    written to by the app since or not."""
    store = FirestoreSessions(jobs.db)
    before = datetime.now(UTC) - timedelta(milliseconds=1)
    remade_path, own_path = new_path(), new_path()
    remade_reference = jobs.db.document(remade_path)
    remade_reference.set({"status": "queued", "createdAt": before - timedelta(hours=1)})
    jobs.db.document(own_path).set({"status": "queued"})
    published = datetime.now(UTC)
    time.sleep(0.05)
    jobs.db.document(own_path).update({"petName": "Rex"})  # the app writes after the job's publication
    written = remade_reference.get().update_time
    remade = store.claim(
        JobRef(remade_path, "m1"), claim_id="c1", owner="a", lease_s=30, max_attempts=3, made_by=before
    )
    assert remade.kind is ClaimKind.REMADE
    assert remade.session_made == remade_reference.get().create_time
    assert remade_reference.get().update_time == written, "nothing written"
    own = store.claim(
        JobRef(own_path, "m2"), claim_id="c2", owner="a", lease_s=30, max_attempts=3, made_by=published
    )
    assert own.kind is ClaimKind.CLAIMED


def test_a_claim_of_a_job_its_session_document_does_not_name_writes_nothing(jobs: JobSystem) -> None:
    store = FirestoreSessions(jobs.db)
    path = new_path()
    reference = jobs.db.document(path)
    reference.set({"status": "queued", "jobId": "job-2"})
    written = reference.get().update_time
    other = store.claim(
        JobRef(path, "m1"), claim_id="c1", owner="a", lease_s=30, max_attempts=3, job_id="job-1"
    )
    assert (other.kind, other.session_job_id) == (ClaimKind.ANOTHER_JOB, "job-2")
    assert reference.get().update_time == written, "nothing written"
    own = store.claim(
        JobRef(path, "m2"), claim_id="c2", owner="a", lease_s=30, max_attempts=3, job_id="job-2"
    )
    assert own.kind is ClaimKind.CLAIMED


def test_a_refusal_by_create_time_from_a_known_document_is_read_again(jobs: JobSystem) -> None:
    """An answer that writes nothing comes only from a read: a known document whose create time would refuse
    (it may have been made again since) is read again, and decided from what is there."""
    path = new_path()
    jobs.db.document(path).set({"status": "queued"})
    snapshot = jobs.db.document(path).get()
    known = Known(snapshot.to_dict(), snapshot.update_time, datetime.now(UTC) + timedelta(hours=1))
    made: list[datetime | None] = []

    def refuse(create_time: datetime | None) -> str | None:
        made.append(create_time)
        return "refused" if create_time is not None and create_time > datetime.now(UTC) else None

    def decide(document: Mapping[str, Any] | None, now: datetime) -> tuple[str, None]:
        return "decided", None

    answer, _ = compare_and_set(jobs.db, path, "claim", decide, datetime.now, known=known, refuse=refuse)
    assert answer == "decided"
    assert made == [known.create_time, snapshot.create_time]


def test_a_change_from_a_document_known_before_the_app_filled_it_is_decided_again_not_refused(
    jobs: JobSystem,
) -> None:
    """The bridge knows the session as it last wrote it; the app then fills it to Firestore's limit. A write
    decided from the known document would not fit: the emulator refuses its stale precondition before its
    size, and the change reads the document again and decides from what is there (sessions.fitted cuts a
    record to the room it finds)."""
    path = new_path()
    jobs.db.document(path).set({"status": "processing"})
    snapshot = jobs.db.document(path).get()
    known = Known(snapshot.to_dict(), snapshot.update_time)
    room = MAX_DOCUMENT_BYTES - name_bytes(path) - document_bytes({"status": "processing", "strokes": ""})
    jobs.db.document(path).update({"strokes": "x" * room})  # the app's write: not a byte left
    decided: list[Mapping[str, Any] | None] = []

    def decide(document: Mapping[str, Any] | None, _now: datetime) -> tuple[None, dict[str, Any]]:
        decided.append(document)
        fits = document is not None and "strokes" in document
        return None, {"status": "done"} if fits else {"status": "done", "note": "n" * 1000}

    compare_and_set(jobs.db, path, "record done", decide, datetime.now, known=known)
    assert len(decided) == 2, "decided from the known document, then from a fresh read"
    assert "strokes" in (decided[1] or {})
    assert (jobs.db.document(path).get().to_dict() or {})["status"] == "done"
