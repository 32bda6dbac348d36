"""The app's side of the job system on the emulators, a bridge run in-process, and a switchable TCP proxy."""

import contextlib
import io
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.cloud import firestore
from google.cloud.pubsub_v1.types import DeadLetterPolicy  # type: ignore[import-untyped]
from PIL import Image

from fluxfill.bridge.bootstrap import Bridge, build_bridge
from fluxfill.bridge.ports import InferenceRequest, InferenceResult, InpaintModel, RunControl
from fluxfill.bridge.service import BridgeService
from fluxfill.bridge.settings import BridgeSettings
from fluxfill.client.local_emulators import LocalJobSystem
from fluxfill.client.triton_binary import free_port
from tests.unit.bridge.fakes import AlwaysReady

PROJECT = "fluxfill-test"
# The least Pub/Sub allows; the bridge's own max_delivery_attempts is set lower in the tests that need it.
POLICY_ATTEMPTS = 5


def encode(array: np.ndarray, kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=kind)
    return buffer.getvalue()


def photo(height: int = 96, width: int = 128) -> np.ndarray:
    return np.random.default_rng(height * 31 + width).integers(0, 256, (height, width, 3), dtype=np.uint8)


def box_mask(height: int = 96, width: int = 128) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4 : height // 2, width // 4 : width // 2] = 255
    return mask


def is_terminal(document: dict[str, object]) -> bool:
    return document.get("status") in {"done", "failed", "cancelled"}


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@dataclass
class JobSystem(LocalJobSystem):
    """One test's topic, subscription, dead-letter topic and bucket, and the app's view of them."""

    project: str = PROJECT

    def create(self, ack_deadline_s: int = 10, policy_attempts: int = POLICY_ATTEMPTS) -> None:
        """The topics, the bridge's pull subscription, a subscription on the dead-letter topic, the bucket."""
        super().create(ack_deadline_s, policy_attempts)

    def add_push_subscription(
        self, endpoint: str, ack_deadline_s: int = 10, policy_attempts: int | None = None
    ) -> None:
        """A push subscription on the job topic (the emulator sends no OIDC token); with `policy_attempts`,
        Pub/Sub dead-letters a message refused that often, as the shipped subscriptions do."""
        request: dict[str, Any] = {
            "name": self.subscriber.subscription_path(self.project, f"push-{self.name}"),
            "topic": self.topic,
            "ack_deadline_seconds": ack_deadline_s,
            "push_config": {"push_endpoint": endpoint},
        }
        if policy_attempts is not None:
            request["dead_letter_policy"] = DeadLetterPolicy(
                dead_letter_topic=self.publisher.topic_path(self.project, self.dead_letter_topic_id),
                max_delivery_attempts=policy_attempts,
            )
        self.subscriber.create_subscription(request=request)

    def settings(self, triton_url: str, **overrides: Any) -> BridgeSettings:
        values: dict[str, Any] = {
            "project": PROJECT,
            "subscription": self.subscription_id,
            "dead_letter_topic": self.dead_letter_topic_id,
            "bucket": self.bucket,
            "triton_url": triton_url,
            "http_host": "127.0.0.1",
            "http_port": 0,
            "readiness_interval_s": 0.2,
            "progress_interval_s": 0.2,
            "lease_s": 30,
            "job_deadline_s": 60,
            "shutdown_grace_s": 10,
            **overrides,
        }
        return BridgeSettings(**values)

    def upload(self, user: str, session: str, name: str, data: bytes) -> None:
        blob = self.storage_client.bucket(self.bucket).blob(f"users/{user}/sessions/{session}/{name}")
        blob.upload_from_string(data)

    def download(self, user: str, session: str, name: str) -> bytes:
        blob = self.storage_client.bucket(self.bucket).blob(f"users/{user}/sessions/{session}/{name}")
        return bytes(blob.download_as_bytes())

    def new_job(
        self, photo_bytes: bytes | None = None, mask_bytes: bytes | None = None, user: str | None = None
    ) -> tuple[str, str]:
        """A fresh session (of a fresh user unless `user` is given) with the photo and mask uploaded and the
        session document queued."""
        user, session = user or f"u{uuid.uuid4().hex[:8]}", f"s{uuid.uuid4().hex[:8]}"
        self.upload(
            user, session, "original.png", photo_bytes if photo_bytes is not None else encode(photo())
        )
        self.upload(user, session, "mask.png", mask_bytes if mask_bytes is not None else encode(box_mask()))
        self.document(user, session).set({"status": "queued"})
        return user, session

    def document(self, user: str, session: str) -> firestore.DocumentReference:
        return self.db.document(f"users/{user}/sessions/{session}")

    def session(self, user: str, session: str) -> dict[str, Any]:
        return self.document(user, session).get().to_dict() or {}

    def status(self, user: str, session: str) -> dict[str, Any]:
        """The session's status field alone: a poll that does not read the app's megabyte of its own data
        20 times a second, starving the run it waits for on a 2-core machine."""
        return self.document(user, session).get(field_paths=["status"]).to_dict() or {}

    def publish(self, data: bytes | dict[str, Any]) -> str:
        payload = data if isinstance(data, bytes) else json.dumps(data).encode()
        return str(self.publisher.publish(self.topic, payload).result(timeout=10))

    def wait_for(
        self, user: str, session: str, done: Callable[[dict[str, Any]], bool], timeout_s: float = 30.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            document = self.session(user, session)
            if done(document):
                return document
            time.sleep(0.05)
        raise AssertionError(f"session {user}/{session} never got there; last: {self.session(user, session)}")

    def pull_now(self, timeout_s: float = 5.0) -> list[Any]:
        """Synchronously pull (and ack) what the bridge's subscription has available within `timeout_s`."""
        path = self.subscription
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            response = self.subscriber.pull(subscription=path, max_messages=10, timeout=5)
            if response.received_messages:
                ack_ids = [m.ack_id for m in response.received_messages]
                self.subscriber.acknowledge(subscription=path, ack_ids=ack_ids)
                return [m.message for m in response.received_messages]
            time.sleep(0.1)
        return []

    def dead_letters(self, expected: int, timeout_s: float = 15.0) -> list[Any]:
        """Pull (and ack) at least `expected` messages from the dead-letter topic."""
        path = self.dead_letter_subscription
        received: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(received) < expected and time.monotonic() < deadline:
            response = self.subscriber.pull(subscription=path, max_messages=10, timeout=2)
            if response.received_messages:
                self.subscriber.acknowledge(
                    subscription=path, ack_ids=[m.ack_id for m in response.received_messages]
                )
                received.extend(m.message for m in response.received_messages)
        return received


class GatedModel(AlwaysReady):
    """Our InpaintModel port: a job whose prompt is held runs until released; the rest end at once.

    Who runs when is then the test's to decide, whatever the machine's speed (the lanes and slots are the
    bridge's; Triton's part is tested elsewhere)."""

    name = "gated"
    protocol = "fake"

    def __init__(self, *held: str) -> None:
        self._held = {prompt: threading.Event() for prompt in held}
        self._lock = threading.Lock()
        self.started: list[str] = []
        self.running: set[str] = set()
        self.overlaps: list[set[str]] = []

    def release(self, prompt: str) -> None:
        self._held[prompt].set()

    def infer(self, request: InferenceRequest, *, on_progress: Any, control: RunControl) -> InferenceResult:
        with self._lock:
            self.started.append(request.prompt)
            self.running.add(request.prompt)
            self.overlaps.append(set(self.running))
        try:
            held = self._held.get(request.prompt)
            if held is not None:
                assert held.wait(30), f"{request.prompt} was never released"
            on_progress(1, 1)
            return InferenceResult(request.image, request.seed)
        finally:
            with self._lock:
                self.running.discard(request.prompt)


@dataclass
class RunningBridge:
    """A BridgeService on a thread of the test process."""

    service: BridgeService
    thread: threading.Thread

    @property
    def bridge(self) -> Bridge:
        return self.service.bridge

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.service.http_port}"

    def counted(self, outcome: str) -> float:
        return self.bridge.metrics.sample("fluxfill_bridge_jobs_total", {"outcome": outcome})

    def stop(self, timeout_s: float = 60.0) -> None:
        self.service.request_stop()
        self.thread.join(timeout=timeout_s)
        assert not self.thread.is_alive(), "the bridge did not stop"


@contextlib.contextmanager
def running_bridge(settings: BridgeSettings, model: InpaintModel | None = None) -> Iterator[RunningBridge]:
    service = BridgeService(build_bridge(settings, model))
    thread = threading.Thread(target=service.run, name="bridge-under-test", daemon=True)
    thread.start()
    assert service.started.wait(30), "the bridge did not start"
    running = RunningBridge(service, thread)
    try:
        yield running
    finally:
        if thread.is_alive():
            running.stop()


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target`; `down()` refuses and cuts connections until `up()`.

    `freeze()` is a hung server (SIGSTOP): connections are accepted and kept, nothing passes until `thaw()`.
    """

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self._target = target_port
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._connections = self._connections, []
        _close([listener, *connections] if listener is not None else connections)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self._target))
            except OSError:
                client.close()
                continue
            with self._lock:
                # down() may have run while this connection was being made: it closed the listener and the
                # connections it knew of, so this pair is closed here, or it would be left open for good.
                accepted_while_up = self._listener is listener
                if accepted_while_up:
                    self._connections += [client, server]
            if not accepted_while_up:
                _close([client, server])
                return
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                self._flowing.wait()
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def _close(sockets: list[socket.socket]) -> None:
    """Shut down and close each socket, whatever state its peer left it in."""
    for each in sockets:
        with contextlib.suppress(OSError):
            each.shutdown(socket.SHUT_RDWR)
        each.close()
