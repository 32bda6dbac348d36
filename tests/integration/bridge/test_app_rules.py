"""The shipped Firestore rules (bridge/firestore.rules) in the emulator, as the app's users meet them.

The app's users write their session documents from their phones, signed in: the emulator enforces the rules on
their requests (an unsigned ID token names the user, as in Firebase's own emulator tests), while the bridge's
service account is not governed by rules. Each test signs in as the app does and shows both sides: what the
contract lets a user do works, through a real bridge and Triton where it involves a job, and every field of
the bridge's is refused to the user.
"""

import base64
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from google.cloud import firestore

from fluxfill.bridge import sessions
from fluxfill.bridge.adapters.storage import CloudStorageObjects
from fluxfill.bridge.contract import BRIDGE_FIELDS, FIRESTORE_RULES, JobStatus, SessionField
from fluxfill.client.local_emulators import GoogleEmulators
from fluxfill.client.local_server import LocalTritonServer
from tests.integration.bridge.harness import (
    PROJECT,
    JobSystem,
    encode,
    is_terminal,
    running_bridge,
    wait_until,
)

pytestmark = pytest.mark.integration
ALLOWED, BAD_REQUEST, REFUSED = 200, 400, 403
# The shipped progress interval and job deadline, for runs under a megabyte of the app's data: every progress
# write carries it (the harness's 0.2 s writes five a second), and a loaded 2-core machine slowed such a run
# to the harness's 60 s deadline.
AS_DEPLOYED: dict[str, Any] = {"progress_interval_s": 1.0, "job_deadline_s": 300.0}


class AppUser:
    """A signed-in user of the app, writing and reading through Firestore's REST API as the app's SDK does;
    `uid` None: not signed in."""

    def __init__(self, emulators: GoogleEmulators, uid: str | None) -> None:
        self.uid = uid
        self._base = f"http://{emulators.firestore.host}/v1/projects/{PROJECT}/databases/(default)/documents"

    def _token(self) -> str:
        def part(value: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

        claims = {
            "iss": f"https://securetoken.google.com/{PROJECT}",
            "aud": PROJECT,
            "sub": self.uid,
            "user_id": self.uid,
            "iat": 0,
            "exp": 2**31,
            "firebase": {"sign_in_provider": "anonymous", "identities": {}},
        }
        return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        # Ids percent-encoded, as the SDK sends them (a custom token's uid may hold `|`, `:`, `+`, `@`, `=`).
        request = urllib.request.Request(  # noqa: S310 (the local emulator)
            f"{self._base}/{urllib.parse.quote(path, safe='/?=&')}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        if self.uid is not None:
            request.add_header("Authorization", f"Bearer {self._token()}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def create(self, path: str, fields: dict[str, Any]) -> int:
        collection, document_id = path.rsplit("/", 1)
        return self._call("POST", f"{collection}?documentId={document_id}", _document(fields))[0]

    def update(self, path: str, fields: dict[str, Any]) -> int:
        """Writes only these fields (an update mask), as the SDK's update() does."""
        mask = "&".join(f"updateMask.fieldPaths={name}" for name in fields)
        return self._call("PATCH", f"{path}?{mask}&currentDocument.exists=true", _document(fields))[0]

    def read(self, path: str) -> tuple[int, dict[str, Any]]:
        status, body = self._call("GET", path)
        return status, {name: _plain(value) for name, value in body.get("fields", {}).items()}

    def delete(self, path: str) -> int:
        return self._call("DELETE", path)[0]


def _value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"booleanValue": value}
    if isinstance(value, int):
        return {"integerValue": str(value)}
    if isinstance(value, datetime):
        return {"timestampValue": value.isoformat().replace("+00:00", "Z")}
    if isinstance(value, dict):
        return {"mapValue": _document(value)}
    return {"stringValue": str(value)}


def _document(fields: dict[str, Any]) -> dict[str, Any]:
    return {"fields": {name: _value(value) for name, value in fields.items()}}


def _plain(value: dict[str, Any]) -> Any:
    (kind, content), *_ = value.items()
    if kind == "mapValue":
        return {name: _plain(inner) for name, inner in content.get("fields", {}).items()}
    return content


def new_session(user: str) -> str:
    return f"users/{user}/sessions/s{uuid.uuid4().hex[:8]}"


def queued(**app_fields: Any) -> dict[str, Any]:
    """What the app writes when it creates a session: queued, its own time, and fields of its own."""
    return {"status": "queued", "updatedAt": datetime.now(UTC), "petName": "Rex", **app_fields}


def session_of(jobs: JobSystem, user: AppUser, **app_fields: Any) -> tuple[str, str]:
    """A session the user created as the app does (photo and mask uploaded by the harness: the local Storage
    stand-in enforces no rules; test_storage_rules runs the objects' rules): its id and document path."""
    assert user.uid is not None
    _, session = jobs.new_job(user=user.uid)
    jobs.document(user.uid, session).delete()
    path = f"users/{user.uid}/sessions/{session}"
    assert user.create(path, queued(**app_fields)) == ALLOWED
    return session, path


@pytest.fixture
def alice(google_emulators: GoogleEmulators) -> AppUser:
    return AppUser(google_emulators, f"alice{uuid.uuid4().hex[:6]}")


@pytest.fixture
def mallory(google_emulators: GoogleEmulators) -> AppUser:
    return AppUser(google_emulators, f"mallory{uuid.uuid4().hex[:6]}")


def test_the_rules_list_of_bridge_fields_is_the_contracts() -> None:
    """The refusal tests below run over the contract's list; this keeps the rules' own list the same."""
    listed = re.search(r"function bridgeFields\(\) \{\s*return \[(.*?)\];", FIRESTORE_RULES.read_text(), re.S)
    assert listed is not None
    assert set(re.findall(r"'([^']+)'", listed.group(1))) == set(BRIDGE_FIELDS)


def test_a_session_the_user_creates_runs_to_done_and_only_its_user_reads_it(
    jobs: JobSystem,
    flux_server: LocalTritonServer,
    alice: AppUser,
    mallory: AppUser,
    google_emulators: GoogleEmulators,
) -> None:
    assert alice.uid is not None
    session, path = session_of(jobs, alice)
    job = {"userId": alice.uid, "sessionId": session, "steps": 2}
    # A short grace: the late copy's missing document is not waited for long.
    with running_bridge(jobs.settings(flux_server.grpc_url, upload_grace_s=1)) as bridge:
        jobs.publish(job)
        jobs.wait_for(alice.uid, session, is_terminal)
        status, document = alice.read(path)
        assert status == ALLOWED
        assert document["status"] == JobStatus.DONE
        assert document["petName"] == "Rex", "the app's own field is kept"
        assert document["result"]["paths"]["edited"].endswith("edited.png")
        assert mallory.read(path)[0] == REFUSED
        assert AppUser(google_emulators, None).read(path)[0] == REFUSED
        assert alice.update(path, {"petName": "Rex II"}) == ALLOWED, "the app's fields stay the app's"
        assert alice.delete(path) == ALLOWED, "a user deletes their own session"
        # A late copy of the job's message (at-least-once delivery) runs nothing and makes no session again.
        jobs.publish(job)
        wait_until(lambda: bridge.counted("orphaned") == 1)
    assert not jobs.document(alice.uid, session).get().exists


def test_a_session_the_user_deletes_and_makes_again_under_its_id_is_not_given_the_old_result(
    jobs: JobSystem, flux_server: LocalTritonServer, alice: AppUser
) -> None:
    """The app deletes a done session's document and makes it again under the same id with a new mask,
    leaving the folder's results (the bridge deletes nothing): the new job kept the old edit at the result's
    path (create-only) and recorded the session done with it."""
    assert alice.uid is not None
    session, path = session_of(jobs, alice)
    job = {"userId": alice.uid, "sessionId": session, "steps": 1}
    objects = CloudStorageObjects(jobs.storage_client, jobs.bucket)
    with running_bridge(jobs.settings(flux_server.grpc_url)):
        jobs.publish(job)
        first = jobs.wait_for(alice.uid, session, is_terminal)
        assert first["status"] == JobStatus.DONE
        edited = objects.find(first["result"]["paths"]["edited"])
        assert edited is not None
        assert edited.result_key == first["resultKey"], "the result carries its session's key"
        assert alice.delete(path) == ALLOWED
        jobs.storage_client.bucket(jobs.bucket).blob(
            f"users/{alice.uid}/sessions/{session}/mask.png"
        ).delete()
        jobs.upload(alice.uid, session, "mask.png", encode(np.full((96, 128), 255, np.uint8)))
        assert alice.create(path, queued()) == ALLOWED
        jobs.publish(job)
        again = jobs.wait_for(alice.uid, session, is_terminal)
    assert again["status"] == JobStatus.FAILED
    assert again["error"]["code"] == "result_path_taken"
    assert "earlier session of the same id" in again["error"]["message"]
    assert "result" not in again
    assert objects.find(edited.path) == edited, "the old edit is left as it was"


def test_the_job_of_a_session_the_user_deleted_does_not_run_on_the_session_made_again_under_its_id(
    jobs: JobSystem, flux_server: LocalTritonServer, alice: AppUser
) -> None:
    """The user deletes a session whose job is still queued and makes it again under the same id with a new
    prompt: the old message, still in Pub/Sub, claimed the new document and ran it with the old prompt, and
    the new session's own message found it done (a duplicate). Firestore's create time tells them apart."""
    assert alice.uid is not None
    session, path = session_of(jobs, alice)
    jobs.publish({"userId": alice.uid, "sessionId": session, "steps": 1, "prompt": "a red hat"})
    assert alice.delete(path) == ALLOWED
    time.sleep(sessions.CLOCKS_APART_S + 0.5)  # past the old job's latest time for its document (no grace)
    assert alice.create(path, queued()) == ALLOWED
    jobs.publish({"userId": alice.uid, "sessionId": session, "steps": 1, "prompt": "a blue hat"})
    with running_bridge(jobs.settings(flux_server.grpc_url, upload_grace_s=0)) as bridge:
        done = jobs.wait_for(alice.uid, session, is_terminal)
        wait_until(lambda: bridge.counted("orphaned") == 1)
        assert bridge.counted("duplicate") == 0
    assert done["status"] == JobStatus.DONE
    assert done["model"]["prompt"] == "a blue hat"
    assert done["attempt"] == 1


def test_the_job_of_a_session_made_again_at_once_is_told_by_its_job_id(
    jobs: JobSystem, flux_server: LocalTritonServer, alice: AppUser
) -> None:
    """Made again within the grace, the create time cannot tell the sessions apart; the app's `jobId` in the
    message and the document does."""
    assert alice.uid is not None
    session, path = session_of(jobs, alice, jobId="job-1")
    jobs.publish(
        {"userId": alice.uid, "sessionId": session, "steps": 1, "prompt": "a red hat", "jobId": "job-1"}
    )
    assert alice.delete(path) == ALLOWED
    assert alice.create(path, queued(jobId="job-2")) == ALLOWED
    jobs.publish(
        {"userId": alice.uid, "sessionId": session, "steps": 1, "prompt": "a blue hat", "jobId": "job-2"}
    )
    with running_bridge(jobs.settings(flux_server.grpc_url)) as bridge:
        done = jobs.wait_for(alice.uid, session, is_terminal)
        wait_until(lambda: bridge.counted("orphaned") == 1)
    assert done["status"] == JobStatus.DONE
    assert done["model"]["prompt"] == "a blue hat"
    assert done["attempt"] == 1


def test_the_user_cancels_a_running_job(
    jobs: JobSystem, slow_flux_server: LocalTritonServer, alice: AppUser
) -> None:
    assert alice.uid is not None
    session, path = session_of(jobs, alice)
    with running_bridge(jobs.settings(slow_flux_server.grpc_url)):
        jobs.publish({"userId": alice.uid, "sessionId": session, "steps": 100})
        jobs.wait_for(alice.uid, session, lambda d: (d.get("progress") or {}).get("step", 0) >= 1)
        assert alice.update(path, {"cancelRequested": True}) == ALLOWED
        document = jobs.wait_for(alice.uid, session, is_terminal)
    assert document["status"] == JobStatus.CANCELLED


def test_a_cancel_after_the_upload_of_a_run_that_died_finds_the_job_done(
    jobs: JobSystem, flux_server: LocalTritonServer, alice: AppUser
) -> None:
    """A run uploaded its results and died before its final write (its document as such a run leaves it);
    the user cancels, then the job's message comes back: its results are recorded, not left beside a
    `cancelled` session the app shows no result for."""
    assert alice.uid is not None
    session, path = session_of(jobs, alice)
    job = {"userId": alice.uid, "sessionId": session, "steps": 1}
    objects = CloudStorageObjects(jobs.storage_client, jobs.bucket)
    with running_bridge(jobs.settings(flux_server.grpc_url)) as bridge:
        jobs.publish(job)
        ran = jobs.wait_for(alice.uid, session, is_terminal)
        assert ran["status"] == JobStatus.DONE
        edited = objects.find(ran["result"]["paths"]["edited"])
        assert edited is not None
        lapsed = datetime.now(UTC) - timedelta(seconds=1)
        died = {"status": JobStatus.PROCESSING.value, SessionField.LEASE_EXPIRES_AT: lapsed}
        gone = dict.fromkeys(("result", "finishedAt", "model", "timings"), firestore.DELETE_FIELD)
        jobs.document(alice.uid, session).update({**died, **gone})
        assert alice.update(path, {"cancelRequested": True}) == ALLOWED
        jobs.publish(job)
        document = jobs.wait_for(alice.uid, session, is_terminal)
        wait_until(lambda: bridge.counted("done") == 2)
    assert document["status"] == JobStatus.DONE, document
    assert document["model"]["recovered"] is True
    assert document["result"]["paths"]["edited"] == ran["result"]["paths"]["edited"]
    assert document["attempt"] == 1, "nothing ran again"
    kept = objects.find(ran["result"]["paths"]["edited"])
    assert kept is not None
    assert kept.generation == edited.generation, "the edited image was written once"


@pytest.mark.parametrize("field", sorted(BRIDGE_FIELDS))
def test_the_user_cannot_create_a_session_with_a_bridge_field(
    jobs: JobSystem, alice: AppUser, field: str
) -> None:
    assert alice.uid is not None
    path = new_session(alice.uid)
    assert alice.create(path, queued(**{field: "forged"})) == REFUSED
    assert alice.create(path, queued()) == ALLOWED


@pytest.mark.parametrize("field", [*sorted(BRIDGE_FIELDS), SessionField.STATUS])
def test_the_user_cannot_write_a_bridge_field_or_the_status_later(
    jobs: JobSystem, alice: AppUser, field: str
) -> None:
    """On a session the bridge is running: forging a result, a lease that never ends, spent attempts."""
    assert alice.uid is not None
    path = new_session(alice.uid)
    assert alice.create(path, queued()) == ALLOWED
    jobs.db.document(path).update({"status": "processing", "claimId": "c1", "attempt": 1})
    forged = {"result": {"paths": {"edited": "users/other/x.png"}}} if field == "result" else {field: "done"}
    assert alice.update(path, forged) == REFUSED
    assert alice.update(path, {"cancelRequested": True}) == ALLOWED


@pytest.mark.parametrize("status", ["processing", "done", "failed", "cancelled", "", 1])
def test_a_session_is_created_queued_or_without_a_status(
    jobs: JobSystem, alice: AppUser, status: Any
) -> None:
    assert alice.uid is not None
    assert alice.create(new_session(alice.uid), queued(status=status)) == REFUSED
    fields = queued()
    del fields["status"]
    assert alice.create(new_session(alice.uid), fields) == ALLOWED


def test_a_user_writes_only_their_own_sessions(jobs: JobSystem, alice: AppUser, mallory: AppUser) -> None:
    assert alice.uid is not None
    path = new_session(alice.uid)
    assert mallory.create(path, queued()) == REFUSED
    assert alice.create(path, queued()) == ALLOWED
    assert mallory.update(path, {"cancelRequested": True}) == REFUSED
    assert mallory.update(path, {"petName": "Mallory's"}) == REFUSED
    jobs.db.document(path).update({"status": "done"})
    assert mallory.delete(path) == REFUSED


def test_a_user_whose_uid_comes_from_another_auth_system_writes_and_reads_only_their_own_sessions(
    jobs: JobSystem, google_emulators: GoogleEmulators, mallory: AppUser
) -> None:
    """The rules compare the token's uid with the path's segment whatever its characters: an Auth0 uid (`|`),
    a Cognito one (`:`), an e-mail address (`@`, `+`), base64's `=`, all at once."""
    rex = AppUser(google_emulators, f"auth0|rex.owner+{uuid.uuid4().hex[:6]}@example.org:aGk=")
    assert rex.uid is not None
    path = new_session(rex.uid)
    assert mallory.create(path, queued()) == REFUSED
    assert rex.create(path, queued()) == ALLOWED
    assert rex.update(path, {"cancelRequested": True}) == ALLOWED
    assert rex.update(path, {"progress": {"step": 9, "total": 9}}) == REFUSED
    assert rex.read(path)[0] == ALLOWED
    assert mallory.read(path)[0] == REFUSED
    assert jobs.db.document(path).get().get("cancelRequested") is True


@pytest.mark.parametrize("value", [False, "yes", 1])
def test_cancel_is_asked_with_true_only(jobs: JobSystem, alice: AppUser, value: Any) -> None:
    """Once asked, a cancel is not withdrawn (the bridge may already have stopped the run); the bridge reads
    only `true` as asked, so anything else is refused rather than silently ignored."""
    assert alice.uid is not None
    path = new_session(alice.uid)
    assert alice.create(path, queued(cancelRequested=False)) == ALLOWED
    assert alice.update(path, {"cancelRequested": True}) == ALLOWED
    assert alice.update(path, {"cancelRequested": value}) == REFUSED
    assert alice.create(new_session(alice.uid), queued(cancelRequested="yes")) == REFUSED


def test_the_bridges_collections_are_closed_to_users(jobs: JobSystem, alice: AppUser) -> None:
    """The runtime config, the per-user slots and parked jobs, the dead-letter ledger: service accounts
    only (a user who could write their slots would lift their own limit)."""
    assert alice.uid is not None
    jobs.db.document("fluxfillConfig/runtime").set({"defaults": {"steps": 28}})
    for path in (
        "fluxfillConfig/runtime",
        f"fluxfillUserSlots/{alice.uid}",
        f"fluxfillParkedJobs/{alice.uid}/jobs/s1",
        "fluxfillDeadLetters/m1",
    ):
        assert alice.read(path)[0] == REFUSED, path
        assert alice.create(path, {"slots": {}}) == REFUSED, path


def fill_to(path: str, room: int, document: dict[str, Any]) -> str:
    """The app's `strokes` that leave `room` bytes in this session document (Firestore's count:
    sessions.document_bytes, and name_bytes; a field of the app's is its name's bytes plus one, its value's
    plus one)."""
    others = {name: value for name, value in document.items() if name != "strokes"}
    used = sessions.name_bytes(path) + sessions.document_bytes(others)
    return "x" * (sessions.MAX_DOCUMENT_BYTES - used - len("strokes") - 2 - room)


@pytest.mark.parametrize(
    ("room", "left"), [(48_000, JobStatus.FAILED), (60, JobStatus.FAILED), (0, JobStatus.QUEUED)]
)
def test_a_session_the_app_filled_to_firestores_limit_ends_with_a_reason_never_processing_for_ever(
    jobs: JobSystem, flux_server: LocalTritonServer, alice: AppUser, room: int, left: JobStatus
) -> None:
    """The rules let the app keep its own data in a session (say, the mask's strokes). Before the size check,
    a session filled near Firestore's 1 MiB was claimed and run, and its final write refused: dead-lettered,
    results uploaded, and the session `processing` for good. Now it is not run: failed with the reason (cut
    to the room left, "…" where it was), or, when not even the code fits, left as the app wrote it; either
    way dead-lettered once and acked."""
    assert alice.uid is not None
    session, path = session_of(jobs, alice, strokes="")
    strokes = fill_to(path, room, jobs.session(alice.uid, session))
    assert alice.update(path, {"strokes": strokes + "x"} if room == 0 else {"strokes": strokes}) == (
        BAD_REQUEST if room == 0 else ALLOWED
    ), "Firestore counts as sessions.document_bytes and name_bytes"
    if room == 0:
        assert alice.update(path, {"strokes": strokes}) == ALLOWED
    with running_bridge(jobs.settings(flux_server.grpc_url)) as bridge:
        jobs.publish({"userId": alice.uid, "sessionId": session, "steps": 2})
        (letter,) = jobs.dead_letters(1)
        assert letter.attributes["fluxfillErrorCode"] == "invalid_job"
        assert "Firestore's limit" in letter.attributes["fluxfillErrorMessage"]
        wait_until(lambda: bridge.counted("dead_letter") == 1)
    document = jobs.session(alice.uid, session)
    del document["strokes"]  # a megabyte: not for a failure's message
    assert document["status"] == left
    if left is JobStatus.FAILED:
        message = document["error"]["message"]
        assert message.startswith("the session document is")
        assert ("Firestore's limit of 1048576 bytes" in message) is (room > 1000)
        assert message.endswith("…") is (room < 1000)
    assert jobs.pull_now(timeout_s=2) == [], "the message was acked, not left to come back"
    names = {blob.name for blob in jobs.storage_client.list_blobs(jobs.bucket, prefix=path)}
    assert names == {f"{path}/original.png", f"{path}/mask.png"}, "nothing was run or uploaded"


def test_a_session_the_app_grows_during_the_run_still_gets_its_result(
    jobs: JobSystem, slow_flux_server: LocalTritonServer, alice: AppUser
) -> None:
    """The claim found room; the app's own data then grew (the rules allow the app's fields at any time) until
    Firestore refused the whole done record. The result's paths are written alone: done, not `processing`."""
    assert alice.uid is not None
    session, path = session_of(jobs, alice)
    with running_bridge(jobs.settings(slow_flux_server.grpc_url, **AS_DEPLOYED)):
        # 4 KB of prompt in 401 tokens, within the 512 the model reads ("mountains": a token of the tiny T5).
        prompt = "mountains " * 400
        jobs.publish({"userId": alice.uid, "sessionId": session, "steps": 60, "prompt": prompt})
        jobs.wait_for(alice.uid, session, lambda d: (d.get("progress") or {}).get("step", 0) >= 1)
        # About 1 KB short of the limit: the result alone fits, the record with its 4 KB prompt does not.
        assert alice.update(path, {"strokes": "x" * 1_046_500}) == ALLOWED
        # Waited for by its status alone: the strokes are a megabyte, which every progress write now carries
        # (8 s alone; polling the whole document 20 times a second took it past the 60 s deadline once on a
        # loaded 2-core machine).
        wait_until(lambda: is_terminal(jobs.status(alice.uid, session)), timeout_s=120)
    document = jobs.session(alice.uid, session)
    del document["strokes"]  # a megabyte: not for a failure's message
    assert document["status"] == JobStatus.DONE
    assert set(document["result"]) == {"paths", "width", "height", "seed", "format"}
    assert "model" not in document, "the whole record did not fit"
    assert jobs.download(alice.uid, session, "edited.png")


def test_a_cancel_that_fills_the_session_to_its_last_byte_is_still_recorded(
    jobs: JobSystem, slow_flux_server: LocalTritonServer, alice: AppUser
) -> None:
    """The app's last write leaves no byte: the cancelled status fits all the same (the claim's own fields
    make room). Before, the record was refused, the job dead-lettered, and the session stayed `processing`.
    Firestore's count is checked on the way: one byte more than the limit is refused to the app."""
    assert alice.uid is not None
    session, path = session_of(jobs, alice)
    with running_bridge(jobs.settings(slow_flux_server.grpc_url, **AS_DEPLOYED)):
        jobs.publish({"userId": alice.uid, "sessionId": session, "steps": 100})
        before = jobs.wait_for(alice.uid, session, lambda d: (d.get("progress") or {}).get("step", 0) >= 1)
        # Heartbeats rewrite the lease, progress and time, each the same size: the room stays as read here.
        used = sessions.name_bytes(path) + sessions.document_bytes({**before, "cancelRequested": True})
        strokes = sessions.MAX_DOCUMENT_BYTES - used - len("strokes") - 2
        too_much = {"strokes": "x" * (strokes + 1), "cancelRequested": True}
        assert alice.update(path, too_much) == BAD_REQUEST, "Firestore counts as sessions.document_bytes"
        assert alice.update(path, {"strokes": "x" * strokes, "cancelRequested": True}) == ALLOWED
        wait_until(lambda: is_terminal(jobs.status(alice.uid, session)), timeout_s=120)
        wait_until(lambda: jobs.pull_now(timeout_s=1) == [], timeout_s=30)
    document = jobs.session(alice.uid, session)
    del document["strokes"]  # a megabyte: not for a failure's message
    assert document["status"] == JobStatus.CANCELLED
    assert document["error"]["code"] == "cancelled"
    assert jobs.dead_letters(1, timeout_s=3) == [], "not dead-lettered"
