"""A second server, for long runs: the session's own allows only the shipped max_steps."""

import pytest

from fluxfill.client.inference import FluxFillClient
from fluxfill.client.local_server import LocalTritonServer
from tests.integration.client.support import LONG_RUN_PARAMETERS, box_mask, photo
from tests.integration.conftest import ServerFactory


@pytest.fixture(scope="session")
def long_run_server(start_flux_server: ServerFactory) -> LocalTritonServer:
    """flux_fill_stream allowing long runs (LONG_RUN_PARAMETERS), warmed up at the tests' size."""
    server = start_flux_server(**LONG_RUN_PARAMETERS)
    # The first run at a new working size spends seconds before its first step, where no cancel is
    # checked; warming up here keeps the tests' timing about the steps alone.
    with FluxFillClient(server.grpc_url) as client:
        client.inpaint(photo(32, 32), box_mask(32, 32), "warm-up", steps=1)
    return server
