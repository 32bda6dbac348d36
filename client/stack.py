"""`fluxfill stack`: the whole job path on this machine, in one command, until Ctrl-C.

Starts tritonserver with the model repository, the Pub/Sub and Firestore emulators and fake-gcs-server, and
one bridge (`python -m fluxfill.bridge`, as deployed); creates the bucket, the jobs topic, the bridge's
subscription with its dead-letter policy, the dead-letter topic and a subscription on it; prints the
`export` lines that point `fluxfill submit | watch | cancel | fetch | dlq` at it; stops everything on Ctrl-C
or SIGTERM (each part in its own process group, always stopped).
"""

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO, Any

from fluxfill.client.errors import EXIT_OK, EXIT_UNAVAILABLE, ServiceUnavailableError
from fluxfill.client.local_emulators import GoogleEmulators, LocalJobSystem, running_emulators
from fluxfill.client.local_server import LocalServerError, LocalTritonServer, ModelUnavailableError
from fluxfill.client.prerequisites import emulator_problems, require, require_free_ports, triton_problems
from fluxfill.client.process_groups import exit_status, stop_group
from fluxfill.client.triton_binary import NO_HTTP_ANSWER, given_or_free_ports
from fluxfill.inpaint.contract import MODEL_NAME, STREAM_MODEL_NAME

logger = logging.getLogger(__name__)

PROJECT = "fluxfill-local"
STACK_NAME = "local"  # LocalJobSystem names: jobs-local, bridge-local, dead-local, dlq-local, bucket-local
BRIDGE_READY_TIMEOUT_S = 60.0
BRIDGE_STOP_S = 12.0  # the bridge's own shutdown takes at most 9 s
PORTS = ("pubsub", "firestore", "storage", "grpc", "http", "metrics", "bridge")


def add_port_options(parser: argparse.ArgumentParser) -> None:
    """--PART-port for every part of the stack; 0 (the default) takes a free port."""
    for name in PORTS:
        parser.add_argument(f"--{name}-port", type=int, default=0, help=f"{name} port (0: a free one)")


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(
    args: argparse.Namespace, model_parameters: Callable[[], dict[str, str]], model_repository: Path
) -> int:
    """Start everything, print how to use it, wait for Ctrl-C, stop everything."""
    require(emulator_problems, triton_problems)
    chosen = {name: getattr(args, f"{name}_port") for name in PORTS if getattr(args, f"{name}_port")}
    require_free_ports("127.0.0.1", chosen)
    parameters = model_parameters()  # checks the weights, or builds the tiny model
    # All different from each other.
    ports = dict(zip(PORTS, given_or_free_ports(*(chosen.get(name) for name in PORTS)), strict=True))
    signal.signal(signal.SIGTERM, _raise_interrupt)
    # Explicitly: a process a shell starts in the background without job control inherits SIGINT ignored,
    # and Python then leaves it ignored; Ctrl-C (or a supervisor's SIGINT) must still stop everything.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    run_dir = Path(tempfile.mkdtemp(prefix="fluxfill-stack-"))
    try:
        with contextlib.ExitStack() as stack:
            # Triton first: a model that fails to load (weights, a parameter) is the likeliest failure, and
            # is then told before three emulators have been started for nothing.
            server = stack.enter_context(
                LocalTritonServer(
                    model_repository,
                    parameters={STREAM_MODEL_NAME: parameters},
                    grpc_port=ports["grpc"],
                    http_port=ports["http"],
                    metrics_port=ports["metrics"],
                    required_models=[STREAM_MODEL_NAME, MODEL_NAME],
                    supervised=True,
                )
            )
            emulators = stack.enter_context(
                running_emulators(ports["pubsub"], ports["firestore"], ports["storage"])
            )
            jobs = _create_job_system(emulators)
            bridge_log = (run_dir / "bridge.log").open("wb")
            stack.callback(bridge_log.close)
            bridge = _start_bridge(jobs, server.grpc_url, ports["bridge"], bridge_log)
            stack.callback(_stop_bridge, bridge)
            _wait_until_ready(bridge, ports["bridge"], run_dir / "bridge.log")
            sys.stdout.write(_usage(emulators, jobs, server, ports["bridge"], run_dir / "bridge.log"))
            sys.stdout.flush()
            return _wait(bridge, server, run_dir / "bridge.log")
    except KeyboardInterrupt:
        sys.stderr.write("fluxfill stack: stopped (everything it started is stopped)\n")
        return EXIT_OK
    except ModelUnavailableError as error:
        raise ServiceUnavailableError(f"{error.model} failed to load: {error.reason}") from None
    except LocalServerError as error:
        # Its message ends with the server's log tail: the first line says what happened.
        raise ServiceUnavailableError(f"tritonserver: {str(error).splitlines()[0]}") from None
    finally:
        with contextlib.suppress(OSError):
            for path in run_dir.iterdir():
                path.unlink()
            run_dir.rmdir()


def _create_job_system(emulators: GoogleEmulators) -> LocalJobSystem:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage  # type: ignore[attr-defined]

    from fluxfill.bridge.adapters.pubsub import publisher_client, subscriber_client

    credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
    jobs = LocalJobSystem(
        publisher=publisher_client(credentials),
        subscriber=subscriber_client(credentials),
        storage_client=storage.Client(project=PROJECT, credentials=credentials),
        db=None,
        project=PROJECT,
        name=STACK_NAME,
    )
    jobs.create(ack_deadline_s=60, policy_attempts=5)
    logger.info("created %s, %s and gs://%s", jobs.topic, jobs.subscription, jobs.bucket)
    return jobs


def _bridge_environment(jobs: LocalJobSystem, triton_url: str, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "FLUXFILL_BRIDGE_PROJECT": PROJECT,
        "FLUXFILL_BRIDGE_SUBSCRIPTION": jobs.subscription_id,
        "FLUXFILL_BRIDGE_URGENT_SUBSCRIPTION": jobs.urgent_subscription_id,
        "FLUXFILL_BRIDGE_TOPIC": jobs.topic_id,
        "FLUXFILL_BRIDGE_URGENT_TOPIC": jobs.urgent_topic_id,
        "FLUXFILL_BRIDGE_DEAD_LETTER_TOPIC": jobs.dead_letter_topic_id,
        "FLUXFILL_BRIDGE_BUCKET": jobs.bucket,
        "FLUXFILL_BRIDGE_TRITON_URL": triton_url,
        "FLUXFILL_BRIDGE_HTTP_HOST": "127.0.0.1",
        "FLUXFILL_BRIDGE_HTTP_PORT": str(port),
        "FLUXFILL_BRIDGE_PROGRESS_INTERVAL_S": "0.5",
    }


def _start_bridge(
    jobs: LocalJobSystem, triton_url: str, port: int, log: IO[bytes]
) -> "subprocess.Popen[bytes]":
    return subprocess.Popen(
        [sys.executable, "-m", "fluxfill.bridge"],
        env=_bridge_environment(jobs, triton_url, port),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop_bridge(bridge: "subprocess.Popen[bytes]") -> None:
    stop_group(bridge, name="the bridge", grace_s=BRIDGE_STOP_S, kill_after_s=2.0)


def _tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def _wait_until_ready(bridge: "subprocess.Popen[bytes]", port: int, log: Path) -> None:
    deadline = time.monotonic() + BRIDGE_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        code = exit_status(bridge)
        if code is not None:
            raise ServiceUnavailableError(f"the bridge exited with {code}:\n{_tail(log)}")
        with (
            contextlib.suppress(*NO_HTTP_ANSWER),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1.0),
        ):
            return
        time.sleep(0.2)
    raise ServiceUnavailableError(
        f"the bridge was not ready after {BRIDGE_READY_TIMEOUT_S:.0f} s:\n{_tail(log)}"
    )


def _usage(
    emulators: GoogleEmulators, jobs: LocalJobSystem, server: LocalTritonServer, port: int, log: Path
) -> str:
    variables: dict[str, Any] = {
        **emulators.environment(),
        "FLUXFILL_PROJECT": PROJECT,
        "FLUXFILL_BUCKET": jobs.bucket,
        "FLUXFILL_TOPIC": jobs.topic_id,
        "FLUXFILL_URGENT_TOPIC": jobs.urgent_topic_id,
        "FLUXFILL_DLQ_SUBSCRIPTION": f"dlq-{jobs.name}",
    }
    exports = "".join(f"export {name}={value}\n" for name, value in variables.items())
    return (
        "# The job path is up. In another shell, paste these lines, then: fluxfill submit PHOTO MASK, "
        "fluxfill watch ID, fluxfill fetch ID\n"
        f"{exports}"
        f"# The bridge reads the same project as FLUXFILL_BRIDGE_PROJECT={PROJECT} (FLUXFILL_* configure the "
        "command line, FLUXFILL_BRIDGE_* the bridge: python -m fluxfill.bridge --help)\n"
        f"# bridge: subscriptions {jobs.subscription_id} (bulk) and {jobs.urgent_subscription_id} (urgent, "
        f"taken first), dead letters to {jobs.dead_letter_topic_id}, "
        f"http://127.0.0.1:{port}/metrics, log {log}\n"
        f"# triton: fluxfill infer PHOTO MASK --url {server.grpc_url} --output OUT.png; "
        f"metrics {server.metrics_url}\n"
        "READY: Ctrl-C stops everything\n"
    )


def _wait(bridge: "subprocess.Popen[bytes]", server: LocalTritonServer, log: Path) -> int:
    """Until Ctrl-C (KeyboardInterrupt), or a part dies: then say which, with its log, and exit 3."""
    while True:
        code = exit_status(bridge)
        if code is not None:
            sys.stderr.write(f"fluxfill stack: the bridge exited with {code}:\n{_tail(log)}\n")
            return EXIT_UNAVAILABLE
        code = server.wait(timeout_s=1.0)
        if code is not None:
            sys.stderr.write(f"fluxfill stack: tritonserver exited with {code}:\n{server.log_text(15)}\n")
            return EXIT_UNAVAILABLE
