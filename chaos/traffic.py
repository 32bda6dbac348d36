"""The app's side of a run: upload and queue the jobs, publish them at a pace, drain the dead letters."""

import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from chaos.workload import Kind, PlannedJob
from fluxfill.client.local_emulators import LocalJobSystem

PUBLISH_TIMEOUT_S = 30.0
# A late upload's objects, a late document, go up this long after its job is published (well within the
# fleet's upload grace).
LATE_WRITE_S = 1.0
# A REMADE session is made again this long after its deleted session's job was published: past the fleet's
# upload grace (FleetConfig.upload_grace_s, 10 s) and the bridge's 2 s for two services' clocks, so the
# bridge can tell the two sessions apart (a unit test keeps it so).
REMAKE_AFTER_S = 13.0


@dataclass
class Published:
    """What was published, when: first publish time per job key, and every message id."""

    first_at: dict[str, datetime] = field(default_factory=dict)
    message_ids: dict[str, list[str]] = field(default_factory=dict)
    cancelled_at: dict[str, datetime] = field(default_factory=dict)  # when the app wrote a job's cancel
    count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, job: PlannedJob, message_id: str, at: datetime, *, its_own: bool = True) -> None:
        """`its_own` False: a message of a deleted session's job (REMADE), not the job's first publication."""
        with self.lock:
            if its_own:
                self.first_at.setdefault(job.key, at)
            self.message_ids.setdefault(job.key, []).append(message_id)
            self.count += 1


def prepare(jobs: LocalJobSystem, planned: Sequence[PlannedJob], workers: int = 8) -> None:
    """Upload each job's objects and create its queued session document, as the app does before publishing
    (a late upload's objects and a late document come after the publication, in `publish_all`)."""

    def one(job: PlannedJob) -> None:
        if not job.user:
            return
        if job.kind is not Kind.LATE_UPLOAD:
            upload_objects(jobs, job)
        # A late document is written after the publication; a deleted one, made and deleted by the app before
        # a bridge takes its job, is in Firestore what one never made is: no document, no trace (a remade
        # one is made again in `publish_all`).
        if job.kind not in (Kind.LATE_DOCUMENT, Kind.DELETED, Kind.REMADE):
            create_session(jobs, job)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, planned))


def create_session(jobs: LocalJobSystem, job: PlannedJob) -> None:
    """The job's queued session document, as the app makes it."""
    session = jobs.db.document(f"users/{job.user}/sessions/{job.session}")
    session.set({"status": "queued", "updatedAt": datetime.now(UTC)})


def upload_objects(jobs: LocalJobSystem, job: PlannedJob) -> None:
    """The job's original and mask, those it has, into the bucket."""
    bucket = jobs.storage_client.bucket(jobs.bucket)
    prefix = f"users/{job.user}/sessions/{job.session}"
    if job.original is not None:
        bucket.blob(f"{prefix}/original.jpg").upload_from_string(job.original, content_type="image/jpeg")
    if job.mask is not None:
        bucket.blob(f"{prefix}/mask.png").upload_from_string(job.mask, content_type="image/png")


def publish_order(planned: Sequence[PlannedJob], seed: int) -> list[PlannedJob]:
    """Every message once per copy; a duplicate's second copy comes right behind the first (an app that
    publishes twice, close together) or, for every other one, at a random later position."""
    rng = random.Random(seed + 1)  # noqa: S311 (a reproducible order, not cryptography)
    order = list(planned)
    duplicates = 0
    for job in planned:
        for _ in range(job.copies - 1):
            first = order.index(job)
            duplicates += 1
            at = first + 1 if duplicates % 2 else rng.randint(first + 1, len(order))
            order.insert(at, job)
    return order


def publish_all(
    jobs: LocalJobSystem, order: Sequence[PlannedJob], rate_per_s: float, published: Published
) -> None:
    """Publish in order at about `rate_per_s`; the publish time recorded is when the server accepted it."""
    interval = 1.0 / rate_per_s
    started = time.monotonic()
    for index, job in enumerate(order):
        delay = started + index * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if job.earlier is not None:
            message_id = jobs.publisher.publish(jobs.topic, job.earlier).result(timeout=PUBLISH_TIMEOUT_S)
            published.record(job, str(message_id), datetime.now(UTC), its_own=False)
            threading.Timer(REMAKE_AFTER_S, remake, (jobs, job, published)).start()
            continue
        message_id = jobs.publisher.publish(jobs.topic, job.data).result(timeout=PUBLISH_TIMEOUT_S)
        late_write = {Kind.LATE_UPLOAD: upload_objects, Kind.LATE_DOCUMENT: create_session}.get(job.kind)
        if late_write is not None and job.key not in published.first_at:
            threading.Timer(LATE_WRITE_S, late_write, (jobs, job)).start()
        if job.cancel_after_s is not None and job.key not in published.first_at:
            threading.Timer(job.cancel_after_s, cancel, (jobs, job, published)).start()
        published.record(job, str(message_id), datetime.now(UTC))


def remake(jobs: LocalJobSystem, job: PlannedJob, published: Published) -> None:
    """The app makes a deleted session again under its id and publishes its new job."""
    create_session(jobs, job)
    message_id = jobs.publisher.publish(jobs.topic, job.data).result(timeout=PUBLISH_TIMEOUT_S)
    published.record(job, str(message_id), datetime.now(UTC))


def cancel(jobs: LocalJobSystem, job: PlannedJob, published: Published) -> None:
    """The user cancels the job, as the app does (`fluxfill cancel` alike): whatever its state."""
    jobs.db.document(f"users/{job.user}/sessions/{job.session}").update(
        {"cancelRequested": True, "updatedAt": datetime.now(UTC)}
    )
    with published.lock:
        published.cancelled_at[job.key] = datetime.now(UTC)


def drain_dead_letters(jobs: LocalJobSystem, into: list[Any]) -> None:
    """Pull (and ack) whatever the dead-letter subscription has now."""
    response = jobs.subscriber.pull(subscription=jobs.dead_letter_subscription, max_messages=100, timeout=5)
    if response.received_messages:
        jobs.subscriber.acknowledge(
            subscription=jobs.dead_letter_subscription,
            ack_ids=[m.ack_id for m in response.received_messages],
        )
        into.extend(m.message for m in response.received_messages)


def left_on_subscription(jobs: LocalJobSystem, wait_s: float) -> list[Any]:
    """Messages still deliverable on the bridges' subscription (a sync pull; run with the bridges stopped)."""
    found: list[Any] = []
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        response = jobs.subscriber.pull(subscription=jobs.subscription, max_messages=100, timeout=2)
        if response.received_messages:
            jobs.subscriber.acknowledge(
                subscription=jobs.subscription, ack_ids=[m.ack_id for m in response.received_messages]
            )
            found.extend(m.message for m in response.received_messages)
        else:
            time.sleep(0.5)
    return found


def session_documents(jobs: LocalJobSystem, planned: Sequence[PlannedJob]) -> dict[str, dict[str, Any]]:
    """The session document of every planned job that has ids (absent documents are left out)."""
    references = [jobs.db.document(f"users/{j.user}/sessions/{j.session}") for j in planned if j.user]
    documents: dict[str, dict[str, Any]] = {}
    for start in range(0, len(references), 200):
        for snapshot in jobs.db.get_all(references[start : start + 200]):
            if snapshot.exists:
                documents[snapshot.reference.id] = snapshot.to_dict() or {}
    return documents


def result_objects(jobs: LocalJobSystem) -> dict[str, list[str]]:
    """Result object names (edited.EXT, preview.jpg) per session id, from a listing of the whole bucket."""
    results: dict[str, list[str]] = {}
    for blob in jobs.storage_client.list_blobs(jobs.bucket):
        parts = blob.name.split("/")
        if len(parts) == 5 and (parts[4].startswith("edited.") or parts[4] == "preview.jpg"):
            results.setdefault(parts[3], []).append(parts[4])
    return results
