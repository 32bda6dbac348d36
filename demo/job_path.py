"""The app's whole path, locally: upload, session, Pub/Sub job, bridge, Triton, results in Storage."""

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.auth.credentials import AnonymousCredentials
from google.cloud import pubsub_v1, storage  # type: ignore[attr-defined]

from fluxfill.bridge.bootstrap import build_bridge
from fluxfill.bridge.contract import JobStatus, SessionField
from fluxfill.bridge.service import BridgeService
from fluxfill.bridge.settings import BridgeSettings
from fluxfill.client.jobs import (
    JobSettings,
    JobSystem,
    SessionRef,
    bridge_templates,
    document_map,
    new_session_id,
)
from fluxfill.client.local_emulators import running_emulators

logger = logging.getLogger("demo")
PROJECT, BUCKET, TOPIC, SUBSCRIPTION, DEAD_TOPIC = (
    "fluxfill-demo",
    "fluxfill-demo",
    "jobs",
    "jobs-bridge",
    "jobs-dead",
)
USER = "demo-user"
TERMINAL = {JobStatus.DONE.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value}


@dataclass(frozen=True)
class JobOutcome:
    """What the app would see: the final session document and where the results were saved."""

    session: dict[str, object]
    edited: Path | None
    preview: Path | None


def _create_topics_and_bucket() -> None:
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic, dead = publisher.topic_path(PROJECT, TOPIC), publisher.topic_path(PROJECT, DEAD_TOPIC)
    publisher.create_topic(name=topic)
    publisher.create_topic(name=dead)
    subscriber.create_subscription(name=subscriber.subscription_path(PROJECT, SUBSCRIPTION), topic=topic)
    storage.Client(project=PROJECT, credentials=AnonymousCredentials()).create_bucket(BUCKET)  # type: ignore[no-untyped-call]


def run_job(grpc_url: str, photo: Path, mask: Path, *, prompt: str, seed: int, out_dir: Path) -> JobOutcome:
    """Start the emulators and a bridge, submit one job as the app does, wait for it, download the results."""
    with running_emulators():
        _create_topics_and_bucket()
        values: dict[str, Any] = {
            "project": PROJECT,
            "subscription": SUBSCRIPTION,
            "dead_letter_topic": DEAD_TOPIC,
            "bucket": BUCKET,
            "triton_url": grpc_url,
            "http_host": "127.0.0.1",
            "http_port": 0,
            "progress_interval_s": 0.2,
        }
        settings = BridgeSettings(**values)
        service = BridgeService(build_bridge(settings))
        worker = threading.Thread(target=service.run, name="bridge")
        worker.start()
        try:
            # The bridge's templates as its settings read them (a FLUXFILL_BRIDGE_*_TEMPLATE of the shell's).
            jobs = JobSystem(
                JobSettings(project=PROJECT, bucket=BUCKET, topic=TOPIC, templates=bridge_templates())
            )
            ref = jobs.ref(USER, new_session_id())
            jobs.submit(ref, photo, mask, prompt=prompt, seed=seed)
            logger.info("submitted session %s; waiting for the bridge", ref.session)
            session = _wait_until_terminal(jobs, ref)
            if session.get(SessionField.STATUS.value) != JobStatus.DONE.value:
                return JobOutcome(session, None, None)
            return JobOutcome(session, *_download(jobs, session, out_dir))
        finally:
            service.request_stop()
            worker.join(timeout=60)


def _wait_until_terminal(jobs: JobSystem, ref: SessionRef, timeout_s: float = 180.0) -> dict[str, object]:
    deadline, last_progress = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        session = jobs.session(ref) or {}
        progress = session.get(SessionField.PROGRESS.value)
        if progress != last_progress and progress:
            logger.info("progress %s", progress)
            last_progress = progress
        if session.get(SessionField.STATUS.value) in TERMINAL:
            return session
        time.sleep(0.1)
    raise TimeoutError(f"session {ref.session} not finished after {timeout_s:.0f} s")


def _download(jobs: JobSystem, session: dict[str, object], out_dir: Path) -> tuple[Path, Path]:
    """The results where the session's record says they are, as `fluxfill fetch` reads them."""
    paths = document_map(document_map(session.get(SessionField.RESULT.value)).get("paths"))
    # The result keeps the original's format: the demo's original is a PNG.
    edited, preview = out_dir / "chelsea-job-edited.png", out_dir / "chelsea-job-preview.jpg"
    jobs.download(str(paths["edited"]), edited)
    jobs.download(str(paths["preview"]), preview)
    return edited, preview
