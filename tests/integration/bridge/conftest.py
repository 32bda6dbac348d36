"""Fixtures of the bridge's integration tests: one job system per test on the session's emulators."""

import pytest

from fluxfill.client.local_emulators import GoogleEmulators
from fluxfill.client.local_server import LocalTritonServer
from tests.integration.bridge.harness import PROJECT, JobSystem
from tests.integration.conftest import ServerFactory


@pytest.fixture
def jobs(google_emulators: GoogleEmulators, google_clients: tuple[object, ...]) -> JobSystem:
    """Fresh topics, subscriptions and bucket, and an empty Firestore."""
    google_emulators.firestore.clear(PROJECT)
    system = JobSystem(*google_clients)  # type: ignore[arg-type]
    system.create()
    return system


@pytest.fixture(scope="session")
def slow_flux_server(start_flux_server: ServerFactory) -> LocalTritonServer:
    """The tiny model denoising at 1024x1024: about 40 ms a step, so a 100-step run lasts seconds."""
    return start_flux_server(min_working_pixels="1048576", max_working_pixels="1048576")


@pytest.fixture(scope="session")
def slower_flux_server(start_flux_server: ServerFactory) -> LocalTritonServer:
    """The tiny model at 1536x1536: ~4 s before the first step, then ~0.4 s a step (2026-12-03, 2 cores)."""
    return start_flux_server(min_working_pixels="2359296", max_working_pixels="2359296")
