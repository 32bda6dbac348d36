"""What a test tritonserver's /metrics says, and when it has settled: a count read "before" a test's run
must not move for an earlier test's run that the server has yet to answer."""

import time
import urllib.request

from fluxfill.client.local_server import LocalTritonServer

# Reads in a row, 0.1 s apart, that find the model holding nothing. Triton's own pending count is not
# required to be 0: a model instance with nothing in hand takes a queued request within milliseconds (in
# neither count only for that moment, never for two reads), and that count has been reported wrong for
# decoupled pipelines (triton-inference-server/server#6494). In one CI run here something stayed "held" for
# minutes after an HTTP run that was let go on; which of the two counts was not recorded, so the message
# now says.
SETTLED_READS = 2


def server_metric(server: LocalTritonServer, name: str, **labels: str) -> float:
    """The sum of a tritonserver metric's series that carry these labels."""
    return summed(metrics_text(server), name, **labels)


def metrics_text(server: LocalTritonServer) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:  # noqa: S310 (local URL)
        return str(response.read().decode())


def summed(text: str, name: str, **labels: str) -> float:
    """The sum of the series of metric `name` in /metrics' `text` that carry these labels."""
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((f"{name}{{", f"{name} ")) and all(label in line for label in wanted)
    )


def outcome_count(server: LocalTritonServer, outcome: str) -> float:
    """The model's requests counted under one outcome (fluxfill_requests_total), as /metrics says now."""
    return server_metric(server, "fluxfill_requests_total", outcome=outcome)


def held(server: LocalTritonServer) -> dict[str, float]:
    """Requests waiting in Triton's queue and held by the model (waiting its turn or running), and the steps
    run so far (a held request that steps is running; one that does not is stuck or preprocessing)."""
    text = metrics_text(server)  # one read: the three counts of one moment
    return {
        "pending": summed(text, "nv_inference_pending_request_count"),
        "in progress": summed(text, "fluxfill_requests_in_progress"),
        "steps": summed(text, "fluxfill_step_duration_seconds_count"),
    }


def wait_until_settled(server: LocalTritonServer, timeout_s: float = 60.0) -> None:
    """Until every request the server took has been answered, and so counted under its outcome. A client
    that stops waiting (a cancel, a deadline) returns before the server stops its run: in CI the next test
    read its "before" count in between, and its own cancel then made two."""
    deadline = time.monotonic() + timeout_s
    first = held(server)
    in_a_row = 0
    while True:
        now = held(server)
        in_a_row = in_a_row + 1 if now["in progress"] == 0 else 0
        if in_a_row == SETTLED_READS:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the server still held requests after {timeout_s:g} s: {first} then {now}")
        time.sleep(0.1)
