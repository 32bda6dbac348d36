"""What a test tritonserver's /metrics says, and when it has settled: a count read "before" a test's run
must not move for an earlier test's run that the server has yet to answer."""

import time
import urllib.request

from fluxfill.client.local_server import LocalTritonServer

SETTLED_READS = 2  # in a row, 0.1 s apart: a request being handed from Triton's queue to the model is in
# neither count for a moment, never for two reads


def server_metric(server: LocalTritonServer, name: str, **labels: str) -> float:
    """The sum of a tritonserver metric's series that carry these labels."""
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:  # noqa: S310 (local URL)
        text = response.read().decode()
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((f"{name}{{", f"{name} ")) and all(label in line for label in wanted)
    )


def holds_nothing(server: LocalTritonServer) -> bool:
    """No request waits in Triton's queue and none is held by the model (waiting its turn or running)."""
    return (
        server_metric(server, "nv_inference_pending_request_count") == 0
        and server_metric(server, "fluxfill_requests_in_progress") == 0
    )


def wait_until_settled(server: LocalTritonServer, timeout_s: float = 60.0) -> None:
    """Until every request the server took has been answered, and so counted under its outcome. A client
    that stops waiting (a cancel, a deadline) returns before the server stops its run: in CI the next test
    read its "before" count in between, and its own cancel then made two."""
    deadline = time.monotonic() + timeout_s
    in_a_row = 0
    while True:
        in_a_row = in_a_row + 1 if holds_nothing(server) else 0
        if in_a_row == SETTLED_READS:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the server still held requests after {timeout_s:g} s")
        time.sleep(0.1)
