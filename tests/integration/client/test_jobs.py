"""`fluxfill submit | watch | cancel | dlq` on the emulators, fake-gcs-server and a real bridge process."""

import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore, pubsub_v1, storage  # type: ignore[attr-defined]
from PIL import Image

from fluxfill.bridge.contract import (
    DEAD_LETTER_CODE_ATTRIBUTE,
    DEAD_LETTER_REASON_ATTRIBUTE,
    DEFERRALS_ATTRIBUTE,
    FIRST_PUBLISHED_ATTRIBUTE,
    ORIGINAL_MESSAGE_ID_ATTRIBUTE,
    JobStatus,
)
from fluxfill.client.errors import ServiceUnavailableError
from fluxfill.client.jobs import JobSettings, JobSystem, SessionRef
from fluxfill.client.local_emulators import GoogleEmulators
from fluxfill.client.local_server import LocalTritonServer
from fluxfill.client.process_groups import end_group, exit_status
from fluxfill.client.triton_binary import free_port
from tests.integration.client.support import box_mask, photo
from tests.support import unanswered_port

pytestmark = pytest.mark.integration

FLUXFILL = str(Path(sys.executable).parent / "fluxfill")
# The emulators are shared by the session: names of our own keep other modules' topics, buckets and
# documents apart (and Pub/Sub names must never be reused after a delete).
PROJECT, BUCKET, USER = "fluxfill-test", "fluxfill-cli-jobs", "cli-user"
TOPIC, SUBSCRIPTION = "cli-jobs", "cli-jobs-bridge"
URGENT_TOPIC, URGENT_SUBSCRIPTION = "cli-jobs-urgent", "cli-jobs-urgent-bridge"
DEAD_TOPIC, DEAD_SUBSCRIPTION = "cli-jobs-dead", "cli-jobs-dead-list"
HEIGHT, WIDTH = 40, 56
# A named Firestore database, as a Firebase app may keep its data in: the bridge and every command here use it
# (FLUXFILL_BRIDGE_FIRESTORE_DATABASE, FLUXFILL_FIRESTORE_DATABASE); before, both could only use (default).
DATABASE = "pet-sessions"


@dataclass
class JobWorld:
    env: dict[str, str]
    files: Path
    bucket: storage.Bucket
    db: firestore.Client
    publisher: pubsub_v1.PublisherClient


def _create_pubsub() -> None:
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic, dead = publisher.topic_path(PROJECT, TOPIC), publisher.topic_path(PROJECT, DEAD_TOPIC)
    urgent = publisher.topic_path(PROJECT, URGENT_TOPIC)
    for name in (topic, urgent, dead):
        publisher.create_topic(name=name)
    subscriber.create_subscription(name=subscriber.subscription_path(PROJECT, SUBSCRIPTION), topic=topic)
    subscriber.create_subscription(
        name=subscriber.subscription_path(PROJECT, URGENT_SUBSCRIPTION), topic=urgent
    )
    subscriber.create_subscription(name=subscriber.subscription_path(PROJECT, DEAD_SUBSCRIPTION), topic=dead)


def _wait_ready(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert exit_status(process) is None, f"the bridge exited:\n{log.read_text()[-3000:]}"
        with suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
            return
        time.sleep(0.2)
    raise AssertionError(f"the bridge never became ready:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def world(
    long_run_server: LocalTritonServer,
    google_emulators: GoogleEmulators,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[JobWorld]:
    folder = tmp_path_factory.mktemp("jobs")
    Image.fromarray(photo(HEIGHT, WIDTH)).save(folder / "photo.jpg", quality=95)
    Image.fromarray(box_mask(HEIGHT, WIDTH)).save(folder / "mask.png")
    with ExitStack() as stack:
        _create_pubsub()
        gcs_client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]
        bucket = gcs_client.create_bucket(BUCKET)
        port = free_port()
        bridge_env = {
            **os.environ,
            "FLUXFILL_BRIDGE_PROJECT": PROJECT,
            "FLUXFILL_BRIDGE_SUBSCRIPTION": SUBSCRIPTION,
            "FLUXFILL_BRIDGE_URGENT_SUBSCRIPTION": URGENT_SUBSCRIPTION,
            "FLUXFILL_BRIDGE_DEAD_LETTER_TOPIC": DEAD_TOPIC,
            "FLUXFILL_BRIDGE_BUCKET": BUCKET,
            "FLUXFILL_BRIDGE_TRITON_URL": long_run_server.grpc_url,
            "FLUXFILL_BRIDGE_HTTP_HOST": "127.0.0.1",
            "FLUXFILL_BRIDGE_HTTP_PORT": str(port),
            "FLUXFILL_BRIDGE_PROGRESS_INTERVAL_S": "0.1",
            "FLUXFILL_BRIDGE_READINESS_INTERVAL_S": "0.2",
            "FLUXFILL_BRIDGE_SHUTDOWN_GRACE_S": "2",
            "FLUXFILL_BRIDGE_JOB_DEADLINE_S": "120",
            "FLUXFILL_BRIDGE_FIRESTORE_DATABASE": DATABASE,
        }
        log = folder / "bridge.log"
        with log.open("wb") as sink:
            argv = [sys.executable, "-m", "fluxfill.bridge"]
            bridge = subprocess.Popen(
                argv, env=bridge_env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        stack.callback(end_group, bridge, timeout_s=5.0)
        _wait_ready(port, bridge, log)
        cli_env = {
            **os.environ,
            "FLUXFILL_PROJECT": PROJECT,
            "FLUXFILL_BUCKET": BUCKET,
            "FLUXFILL_TOPIC": TOPIC,
            "FLUXFILL_URGENT_TOPIC": URGENT_TOPIC,
            "FLUXFILL_DLQ_SUBSCRIPTION": DEAD_SUBSCRIPTION,
            "FLUXFILL_USER": USER,
            "FLUXFILL_FIRESTORE_DATABASE": DATABASE,
        }
        db = firestore.Client(project=PROJECT, credentials=AnonymousCredentials(), database=DATABASE)  # type: ignore[no-untyped-call]
        yield JobWorld(cli_env, folder, bucket, db, pubsub_v1.PublisherClient())


def fluxfill(
    world: JobWorld, *args: str | Path, timeout: float = 90, **overrides: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLUXFILL, *map(str, args)],
        env={**world.env, **overrides},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def submit(world: JobWorld, *extra: str) -> str:
    result = fluxfill(world, "submit", world.files / "photo.jpg", world.files / "mask.png", *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def document(world: JobWorld, session: str) -> dict[str, object]:
    return world.db.document(f"users/{USER}/sessions/{session}").get().to_dict() or {}


def wait_for_status(world: JobWorld, session: str, status: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while document(world, session).get("status") != status:
        assert time.monotonic() < deadline, f"{session} never {status}: {document(world, session)}"
        time.sleep(0.05)


def test_submit_uploads_creates_and_publishes_then_watch_reaches_done(world: JobWorld) -> None:
    session = submit(world, "--prompt", "a boat", "--steps", "3", "--seed", "5")
    assert len(session) == 20
    assert world.bucket.blob(f"users/{USER}/sessions/{session}/original.jpg").exists()
    uploaded_mask = world.bucket.blob(f"users/{USER}/sessions/{session}/mask.png").download_as_bytes()
    assert np.asarray(Image.open(io.BytesIO(uploaded_mask))).shape == (HEIGHT, WIDTH)
    result = fluxfill(world, "watch", session, "--timeout", "60")
    assert result.returncode == 0, result.stderr
    assert f"{session}: done: " in result.stdout
    assert f"({WIDTH}x{HEIGHT}, seed 5)" in result.stdout
    # Whether it saw the job processing depends on whether the job ended before the watch began (three steps
    # of the tiny model); the states in between: tests/unit/client/test_jobs.py.
    assert result.stderr.splitlines()[-1] == "done (attempt 1)"
    # The job's id is in its session document; done, so its message named the same one (another is refused).
    job_id = document(world, session)["jobId"]
    assert isinstance(job_id, str)
    assert len(job_id) == 32
    edited = world.bucket.blob(f"users/{USER}/sessions/{session}/edited.jpg").download_as_bytes()
    assert Image.open(io.BytesIO(edited)).size == (WIDTH, HEIGHT)
    fetched = fluxfill(world, "fetch", session, "--output-dir", world.files / "fetched")
    assert fetched.returncode == 0, fetched.stderr
    written = sorted(Path(line) for line in fetched.stdout.splitlines())
    assert [p.name for p in written] == [f"{session}-edited.jpg", f"{session}-preview.jpg"]
    assert written[0].read_bytes() == edited
    with Image.open(written[1]) as preview:
        assert preview.format == "JPEG"
    assert sorted(p.name for p in (world.files / "fetched").iterdir()) == [p.name for p in written]
    unwritable = fluxfill(world, "fetch", session, "--output-dir", "/proc/fluxfill")
    assert unwritable.returncode == 2, "told before any download, in a sentence (an unexpected error was)"
    assert unwritable.stderr.startswith("fluxfill fetch: --output-dir /proc/fluxfill: cannot be written ("), (
        unwritable.stderr
    )
    default = firestore.Client(project=PROJECT, credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]
    assert not default.document(f"users/{USER}/sessions/{session}").get().exists, "the named database alone"


def test_a_submit_that_cannot_publish_leaves_nothing_behind(world: JobWorld) -> None:
    session = "topic-missing-1"
    result = fluxfill(world, "submit", world.files / "photo.jpg", world.files / "mask.png",
                      "--topic", "no-such-topic", "--session", session)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "not found" in result.stderr
    assert "nothing is left behind" in result.stderr
    assert result.stdout == ""
    prefix = f"users/{USER}/sessions/{session}/"
    assert list(world.bucket.list_blobs(prefix=prefix)) == []
    assert not world.db.document(f"users/{USER}/sessions/{session}").get().exists


def test_invalid_job_fields_exit_2_before_anything_is_uploaded(world: JobWorld) -> None:
    result = fluxfill(world, "submit", world.files / "photo.jpg", world.files / "mask.png", "--steps", "500",
                      "--session", "never-created")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("fluxfill submit: invalid job: steps: ")
    assert len(result.stderr.splitlines()) == 1
    assert not world.bucket.blob(f"users/{USER}/sessions/never-created/mask.png").exists()


def test_cancel_reaches_cancelled(world: JobWorld) -> None:
    session = submit(world, "--steps", "100")
    wait_for_status(world, session, JobStatus.PROCESSING)
    early = fluxfill(world, "fetch", session, "--output-dir", world.files / "early")
    assert early.returncode == 2
    assert f"{session} is processing: nothing to fetch yet" in early.stderr
    result = fluxfill(world, "cancel", session)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{session}: cancel requested\n"
    watched = fluxfill(world, "watch", session, "--timeout", "30")
    assert watched.returncode == 4
    assert f"{session} cancelled: cancelled:" in watched.stderr
    again = fluxfill(world, "cancel", session)
    assert again.stdout == f"{session}: already cancelled\n"
    fetched = fluxfill(world, "fetch", session, "--output-dir", world.files / "early")
    assert fetched.returncode == 4
    assert f"fluxfill fetch: {session} cancelled: cancelled:" in fetched.stderr
    assert not (world.files / "early").exists()


def test_watch_and_cancel_of_an_unknown_session_exit_2(world: JobWorld) -> None:
    for command in ("watch", "cancel"):
        result = fluxfill(world, command, "no-such-session")
        assert result.returncode == 2
        assert "no session no-such-session of user cli-user" in result.stderr


def test_poisoned_job_is_listed_with_its_reason_and_replay_of_a_fixed_job_completes_it(
    world: JobWorld,
) -> None:
    # A message the app should never send: the real bridge refuses and dead-letters it.
    poisoned = "poisoned-1"
    world.db.document(f"users/{USER}/sessions/{poisoned}").create({"status": "queued"})
    data = json.dumps({"userId": USER, "sessionId": poisoned, "steps": 500}).encode()
    world.publisher.publish(world.publisher.topic_path(PROJECT, TOPIC), data).result(timeout=10)
    wait_for_status(world, poisoned, JobStatus.FAILED)
    # A job dead-lettered for a cause since fixed (here: published as the bridge does when it gives up).
    fixed = submit(world, "--steps", "2", "--session", "fixed-1", "--priority", "urgent")
    wait_for_status(world, fixed, JobStatus.DONE)
    exhausted = {"status": "failed", "result": None, "attempt": 5, "error": {"code": "retries_exhausted"}}
    world.db.document(f"users/{USER}/sessions/{fixed}").update(exhausted)
    job = json.dumps({"userId": USER, "sessionId": fixed, "steps": 2, "priority": "urgent"}).encode()
    attributes = {
        DEAD_LETTER_CODE_ATTRIBUTE: "retries_exhausted",
        DEAD_LETTER_REASON_ATTRIBUTE: "triton was down",
        ORIGINAL_MESSAGE_ID_ATTRIBUTE: "original-of-fixed-1",
    }
    for _ in range(2):  # dead-lettered twice, as at-least-once delivery can leave it
        world.publisher.publish(world.publisher.topic_path(PROJECT, DEAD_TOPIC), job, **attributes).result(
            timeout=10
        )

    listed = fluxfill(world, "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split("\t")[1]: line.split("\t") for line in listed.stdout.splitlines()}
    assert rows[f"{USER}/{poisoned}"][2] == "invalid_job"
    assert "steps: Input should be less than or equal to 100" in rows[f"{USER}/{poisoned}"][3]
    assert rows[f"{USER}/{fixed}"][2:] == ["retries_exhausted", "triton was down"]
    assert fluxfill(world, "dlq", "list").stdout == listed.stdout, "listing must leave the queue as it was"

    # An urgent job goes back to the urgent topic: the bulk one may not even exist.
    replayed = fluxfill(world, "dlq", "replay", fixed, FLUXFILL_TOPIC="no-such-topic")
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.count(f"({fixed})") == 1, "two copies of one message are replayed once"
    watched = fluxfill(world, "watch", fixed, "--timeout", "60")
    assert watched.returncode == 0, watched.stderr
    document = world.db.document(f"users/{USER}/sessions/{fixed}").get().to_dict() or {}
    assert document["attempt"] == 1, "a replayed job starts afresh: one more try would not do"
    assert document["replayed"]["previousAttempts"] == 5
    assert document["replayed"]["previousError"] == {"code": "retries_exhausted"}
    refused = fluxfill(world, "dlq", "replay", poisoned)
    assert refused.returncode == 2
    assert "not a valid job (invalid_job): replaying it would only dead-letter it again" in refused.stderr
    assert "Traceback" not in refused.stderr
    remaining = fluxfill(world, "dlq", "list").stdout
    assert poisoned in remaining
    assert fixed not in remaining
    assert fluxfill(world, "dlq", "replay").returncode == 2, "replay needs an ID or --all"


def test_a_job_pub_sub_dead_lettered_unclaimed_is_listed_so_and_replay_runs_it(world: JobWorld) -> None:
    # Refused by busy bridges as often as the dead-letter policy allows (push overload): Pub/Sub dead-letters
    # it itself, with its own attributes, and the session was never touched.
    session = "refused-1"
    folder = f"users/{USER}/sessions/{session}"
    world.bucket.blob(f"{folder}/original.jpg").upload_from_filename(world.files / "photo.jpg")
    world.bucket.blob(f"{folder}/mask.png").upload_from_filename(world.files / "mask.png")
    world.db.document(folder).create({"status": "queued"})
    job = json.dumps({"userId": USER, "sessionId": session, "steps": 2}).encode()
    attributes = {
        "CloudPubSubDeadLetterSourceDeliveryCount": "10",
        "CloudPubSubDeadLetterSourceSubscription": "s",
    }
    dead_topic = world.publisher.topic_path(PROJECT, DEAD_TOPIC)
    world.publisher.publish(dead_topic, job, **attributes).result(timeout=10)
    listed = fluxfill(world, "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    (row,) = [line.split("\t") for line in listed.stdout.splitlines() if f"{USER}/{session}" in line]
    assert row[2] == "unclaimed"
    assert "after 10 deliveries that no bridge took" in row[3]
    assert fluxfill(world, "dlq", "replay", session).returncode == 0
    watched = fluxfill(world, "watch", session, "--timeout", "60")
    assert watched.returncode == 0, watched.stderr


def test_a_replay_is_the_jobs_publication_afresh_on_a_session_made_since_its_first(world: JobWorld) -> None:
    """A parked job's dead letter carries the job's first publication; the session was made (again, under
    its id) after it. The operator replays the job onto the session as it is now: kept, that time dated the
    replay before the document, the bridge took it for a deleted session's job and acked it orphaned, and the
    session stayed queued."""
    session = "remade-1"
    folder = f"users/{USER}/sessions/{session}"
    world.bucket.blob(f"{folder}/original.jpg").upload_from_filename(world.files / "photo.jpg")
    world.bucket.blob(f"{folder}/mask.png").upload_from_filename(world.files / "mask.png")
    world.db.document(folder).create({"status": "failed", "error": {"code": "retries_exhausted"}})
    job = json.dumps({"userId": USER, "sessionId": session, "steps": 2}).encode()
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    attributes = {
        DEAD_LETTER_CODE_ATTRIBUTE: "retries_exhausted",
        DEAD_LETTER_REASON_ATTRIBUTE: "triton was down",
        FIRST_PUBLISHED_ATTRIBUTE: hour_ago,
        DEFERRALS_ATTRIBUTE: "1",
    }
    world.publisher.publish(world.publisher.topic_path(PROJECT, DEAD_TOPIC), job, **attributes).result(
        timeout=10
    )
    assert fluxfill(world, "dlq", "replay", session).returncode == 0
    watched = fluxfill(world, "watch", session, "--timeout", "60")
    assert watched.returncode == 0, watched.stderr
    document = world.db.document(folder).get().to_dict() or {}
    assert document["status"] == JobStatus.DONE


def dead_letter(world: JobWorld, job: dict[str, object]) -> None:
    """`job` dead-lettered by a bridge that gave up on it (its code and reason attributes)."""
    attributes = {
        DEAD_LETTER_CODE_ATTRIBUTE: "retries_exhausted",
        DEAD_LETTER_REASON_ATTRIBUTE: "triton was down",
    }
    data = json.dumps(job).encode()
    world.publisher.publish(world.publisher.topic_path(PROJECT, DEAD_TOPIC), data, **attributes).result(
        timeout=10
    )


def test_replay_of_a_job_whose_session_names_another_job_is_refused_and_its_dead_letter_kept(
    world: JobWorld,
) -> None:
    """The app made the session again under its id (a new `jobId`) after the job was dead-lettered: the
    replay would requeue the new session and the bridge refuse the job on it, leaving the session queued."""
    session = "named-1"
    folder = f"users/{USER}/sessions/{session}"
    world.db.document(folder).create({"status": "failed", "jobId": "job-2", "error": {"code": "cancelled"}})
    dead_letter(world, {"userId": USER, "sessionId": session, "steps": 2, "jobId": "job-1"})
    refused = fluxfill(world, "dlq", "replay", session)
    assert refused.returncode == 2, refused.stderr
    assert f"{folder} names another job (jobId 'job-2'; this one's is 'job-1')" in refused.stderr
    assert (world.db.document(folder).get().to_dict() or {})["status"] == "failed", (
        "the session left as it was"
    )
    assert f"{USER}/{session}\tretries_exhausted" in fluxfill(world, "dlq", "list").stdout


def test_replay_of_a_job_whose_session_the_app_deleted_is_refused_and_its_dead_letter_kept(
    world: JobWorld,
) -> None:
    session = "deleted-1"
    dead_letter(world, {"userId": USER, "sessionId": session, "steps": 2})
    refused = fluxfill(world, "dlq", "replay", session)
    assert refused.returncode == 2, refused.stderr
    assert f"users/{USER}/sessions/{session} does not exist (the app deleted the session)" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not world.db.document(f"users/{USER}/sessions/{session}").get().exists
    assert f"{USER}/{session}\tretries_exhausted" in fluxfill(world, "dlq", "list").stdout


def test_dlq_list_reads_a_dead_letter_near_pubsubs_size_limit(world: JobWorld) -> None:
    """gRPC's default 4 MB receive limit must not stop the listing of a 5 MB dead letter."""
    job = json.dumps({"userId": USER, "sessionId": "big-1", "prompt": "x" * 5_000_000}).encode()
    attributes = {DEAD_LETTER_CODE_ATTRIBUTE: "invalid_job", DEAD_LETTER_REASON_ATTRIBUTE: "prompt too long"}
    topic = world.publisher.topic_path(PROJECT, DEAD_TOPIC)
    world.publisher.publish(topic, job, **attributes).result(timeout=30)
    listed = fluxfill(world, "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    assert f"{USER}/big-1\tinvalid_job\tprompt too long" in listed.stdout


@pytest.mark.parametrize(
    ("action", "call"),
    [
        ("request cancellation of", lambda jobs, ref: jobs.request_cancel(ref)),
        ("requeue", lambda jobs, ref: jobs.requeue(ref, "a replay")),
    ],
    ids=["cancel", "replay"],
)
def test_a_change_firestore_never_answers_is_service_unavailable_within_the_calls_bound(
    monkeypatch: pytest.MonkeyPatch, action: str, call: Callable[[JobSystem, SessionRef], object]
) -> None:
    """These were transactions: the first call of one cannot be bounded (60 s with its retries), and when it
    failed Google's client raised "no transaction ID" in its place: `fluxfill cancel` exited 1 with a log."""
    ref = SessionRef("u", "s1")
    with unanswered_port() as port:
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{port}")
        jobs = JobSystem(JobSettings(project="p", call_timeout_s=1.0))
        started = time.monotonic()
        with pytest.raises(ServiceUnavailableError) as failed:
            call(jobs, ref)
    assert str(failed.value) == f"cannot {action} {ref.document}: 504 Deadline Exceeded"
    assert failed.value.retryable
    assert time.monotonic() - started < 5
