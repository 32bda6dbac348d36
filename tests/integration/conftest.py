"""Session fixtures: the tiny model, and real tritonservers serving the real model repository."""

import signal
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore, pubsub_v1, storage  # type: ignore[attr-defined]

from fluxfill.client.local_emulators import GoogleEmulators, running_emulators
from fluxfill.client.local_server import LocalTritonServer
from fluxfill.inpaint.contract import MODEL_NAME, STREAM_MODEL_NAME
from fluxfill.inpaint.tiny import TinyModel, ensure_tiny_model
from tests.support import MODEL_REPOSITORY, REPO_ROOT

PROJECT = "fluxfill-test"

# Shared with `make demo`: building is idempotent, so a second run reuses it.
TINY_MODEL_DIR = REPO_ROOT / "build" / "tiny-flux-fill"
# Few steps keep the integration tests fast; the tests that care pass STEPS themselves.
TEST_PARAMETERS = {
    "default_steps": "2",
    "min_working_pixels": "16384",
    "max_working_pixels": "65536",
    "warmup_steps": "1",
}

ServerFactory = Callable[..., LocalTritonServer]
SERVER_LOG_LINES = 40


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test shows the state and the log's end of each tritonserver it used: a session server that
    stopped answering mid-run (once, unexplained, in CI) otherwise leaves nothing, its log going with its run
    dir at the session's end."""
    report = yield
    if report.failed:
        for name, value in getattr(item, "funcargs", {}).items():
            if isinstance(value, LocalTritonServer) and value.pid is not None:
                report.sections.append((f"tritonserver of {name} (pid {value.pid})", server_state(value)))
    return report


def server_state(server: LocalTritonServer) -> str:
    """Running, or how it ended (a signal names its sender's intent), then the end of its log."""
    code = server.wait(timeout_s=0)
    if code is None:
        state = "running"
    elif code < 0:
        state = f"ended by {signal.Signals(-code).name}"
    else:
        state = f"exited with status {code}"
    return f"{state}; the last {SERVER_LOG_LINES} lines of its log:\n{server.log_text(SERVER_LOG_LINES)}"


@pytest.fixture(scope="session")
def tiny_model() -> TinyModel:
    return ensure_tiny_model(TINY_MODEL_DIR)


@pytest.fixture(scope="session")
def start_flux_server(tiny_model: TinyModel) -> Iterator[ServerFactory]:
    """Start tritonservers with flux_fill_stream's parameters overridden; all are stopped at the end, together
    (each takes seconds to unload its models: one after another they took ~25 s of every test run)."""
    servers: list[LocalTritonServer] = []

    def start(require_ready: bool = True, **parameters: str) -> LocalTritonServer:
        merged = {"weights_dir": str(tiny_model.pipeline_dir), **TEST_PARAMETERS, **parameters}
        server = LocalTritonServer(
            MODEL_REPOSITORY,
            parameters={STREAM_MODEL_NAME: merged},
            required_models=[STREAM_MODEL_NAME, MODEL_NAME] if require_ready else [],
        )
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        with ThreadPoolExecutor(max_workers=max(1, len(servers))) as stopping:
            # list(): an error stopping one is raised here, after every stop was tried.
            list(stopping.map(LocalTritonServer.stop, servers))


@pytest.fixture(scope="session")
def google_emulators() -> Iterator[GoogleEmulators]:
    """Pub/Sub and Firestore emulators and fake-gcs-server, with *_EMULATOR_HOST set for the session."""
    with running_emulators() as emulators:
        yield emulators


@pytest.fixture(scope="session")
def flux_server(start_flux_server: ServerFactory) -> LocalTritonServer:
    """The tiny diffusers-format model, READY."""
    return start_flux_server()


@pytest.fixture(scope="session")
def google_clients(google_emulators: GoogleEmulators) -> Iterator[tuple[object, ...]]:
    """The app's clients on the emulators: publisher, subscriber, storage and Firestore."""
    credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
    publisher = pubsub_v1.PublisherClient(credentials=credentials)
    subscriber = pubsub_v1.SubscriberClient(credentials=credentials)
    storage_client = storage.Client(project=PROJECT, credentials=credentials)
    db = firestore.Client(project=PROJECT, credentials=credentials)
    yield publisher, subscriber, storage_client, db
    subscriber.close()
