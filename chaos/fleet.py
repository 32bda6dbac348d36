"""The fleet under test: the Google emulators, one tritonserver, bridge processes; each can be killed.

Everything is real: `python -m fluxfill.bridge` subprocesses and a tritonserver (with its Python-backend
stubs) serving the tiny FLUX Fill model. SIGKILL is sent to a whole process group, as a crashed container
dies. The bridges pull (the worker pool's way), or take pushes (the push service's way): the emulator pushes
the jobs' subscription to a router in front of them (chaos.router), as Pub/Sub pushes to Cloud Run.
"""

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore, pubsub_v1, storage  # type: ignore[attr-defined]

from chaos.router import PushRouter, running_router
from fluxfill.client.local_emulators import GoogleEmulators, LocalJobSystem, running_emulators
from fluxfill.client.local_server import LocalTritonServer
from fluxfill.client.process_groups import end_group, exit_status, group_members, signal_group, stop_group
from fluxfill.client.triton_binary import free_ports
from fluxfill.inpaint.contract import MODEL_NAME, STREAM_MODEL_NAME
from fluxfill.inpaint.tiny import ensure_tiny_model

PROJECT = "fluxfill-chaos"
REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = REPO_ROOT / "model_repository"
TINY_MODEL_DIR = REPO_ROOT / "build" / "tiny-flux-fill"
# Small working sizes keep one job at tens of milliseconds on 2 CPU cores; the steps are set per job.
TRITON_PARAMETERS = {
    "default_steps": "2",
    "min_working_pixels": "16384",
    "max_working_pixels": "65536",
    "warmup_steps": "1",
}


@dataclass(frozen=True)
class FleetConfig:
    """Knobs of one run; the defaults suit the 2-core CI machine."""

    bridges: int = 2
    concurrency: int = 2  # max_concurrent_jobs per bridge
    # The bridge's own budget counts claims, so faults spend it: a job can meet all four, each costing a
    # claim; hence more than deploy/config.env's 5. Pub/Sub's policy counts every delivery, and this emulator
    # keeps delivering to a SIGKILLed bridge's dead stream (one message went there 10 times), so the policy
    # gets the most Pub/Sub allows: the bridge decides first.
    max_delivery_attempts: int = 10
    policy_attempts: int = 100
    ack_deadline_s: int = 10
    lease_s: float = 4.0
    progress_interval_s: float = 0.5
    # Counted from the start of inference: a hung Triton is stopped for longer than this.
    job_deadline_s: float = 15.0
    # A late upload's objects arrive 1 s after its publication; a missing object's job fails after this.
    upload_grace_s: float = 10.0
    # As on Cloud Run, where every instance's hostname is `localhost`: claims must not rely on names.
    shared_instance_id: str | None = "localhost"
    # Priority lanes: the bridges also pull the urgent subscription, and take it first.
    urgent_lane: bool = False
    max_jobs_in_flight_per_user: int = 0
    # pull, or push through a router; a push waits on its bridge for the whole run, and Pub/Sub pushes the
    # message again past the ack deadline (600 s as deployed): longer than a Triton outage here.
    delivery: Literal["pull", "push"] = "pull"
    push_ack_deadline_s: int = 60


class BridgeProcess:
    """One `python -m fluxfill.bridge` process; `kill()` is SIGKILL, `start()` a fresh incarnation."""

    def __init__(
        self,
        name: str,
        environment: dict[str, str],
        log_dir: Path,
        shared_instance_id: str | None = None,
        reserved_ports: Collection[int] = (),
    ) -> None:
        """`reserved_ports`: never this bridge's HTTP port (a restarting Triton's, free while it is down)."""
        self.name = name
        self._shared_instance_id = shared_instance_id
        self._reserved_ports = reserved_ports
        self._environment = environment
        self._log_dir = log_dir
        self.incarnation = 0
        self.http_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []

    @property
    def incarnation_name(self) -> str:
        # A restarted bridge is a new instance (a new container), so it cannot resume its old leases.
        return f"{self.name}-{self.incarnation}"

    @property
    def instance_id(self) -> str:
        return self._shared_instance_id or self.incarnation_name

    def start(self) -> None:
        self.incarnation += 1
        self.http_port = free_ports(1, excluding=self._reserved_ports)[0]
        env = {
            **os.environ,
            **self._environment,
            "FLUXFILL_BRIDGE_INSTANCE_ID": self.instance_id,
            "FLUXFILL_BRIDGE_HTTP_PORT": str(self.http_port),
        }
        log = self._log_dir / f"{self.incarnation_name}.log"
        self.logs.append(log)
        with log.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fluxfill.bridge"],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL: no drain, no nack, no lease given back."""
        if self.process is not None:
            signal_group(self.process, signal.SIGKILL)
            end_group(self.process, timeout_s=2.0)

    def signal(self, signum: int) -> None:
        """Send `signum` to the bridge's process group (SIGSTOP / SIGCONT: a process that hangs)."""
        if self.process is not None and exit_status(self.process) is None:
            signal_group(self.process, signum)

    def terminate(self, timeout_s: float = 30.0) -> None:
        """SIGTERM and wait for the drain (the graceful path), then end what is left of its group."""
        if self.process is not None:
            stop_group(self.process, name=self.incarnation_name, grace_s=timeout_s, kill_after_s=2.0)

    @property
    def pids(self) -> list[int]:
        return [] if self.process is None or exit_status(self.process) is not None else [self.process.pid]


class TritonProcess:
    """A tritonserver on fixed ports, so bridges reconnect to the same address after a restart."""

    def __init__(self, run_dir: Path) -> None:
        self._run_dir = run_dir
        http, grpc, metrics = free_ports(3)  # three different ports: drawn apart, two could be one
        self.ports = (http, grpc, metrics)
        self.server: LocalTritonServer | None = None
        self._lock = threading.Lock()
        # Held across a kill-and-restart (a fault, or the supervisor), so the two never interleave.
        self.exclusive = threading.Lock()
        self.restarts = 0
        self.crash_restarts: list[str] = []

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports[1]}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[2]}/metrics"

    def start(self) -> None:
        model = ensure_tiny_model(TINY_MODEL_DIR)
        http, grpc, metrics = self.ports
        server = LocalTritonServer(
            MODEL_REPOSITORY,
            run_dir=self._run_dir / f"triton-{self.restarts}",
            parameters={STREAM_MODEL_NAME: {"weights_dir": str(model.pipeline_dir), **TRITON_PARAMETERS}},
            http_port=http,
            grpc_port=grpc,
            metrics_port=metrics,
            required_models=[STREAM_MODEL_NAME, MODEL_NAME],
            # As the Triton image runs it: a ready model's stub that dies ends the server (then restarted),
            # and its output goes through the supervisor's pipes (JSON entries), which must never block it.
            supervised=True,
            json_logs=True,
        )
        with self._lock:
            self.server = server
        server.start()

    def kill(self) -> None:
        """SIGKILL the server and its stubs (one process group), then clean up."""
        with self._lock:
            server, self.server = self.server, None
        if server is not None:
            if server.pid is not None:
                server.signal_group(signal.SIGKILL)
            server.stop()
        self.restarts += 1

    def stop(self) -> None:
        with self._lock:
            server, self.server = self.server, None
        if server is not None:
            server.stop()

    def supervise(self, stop: threading.Event, interval_s: float = 1.0) -> threading.Thread:
        """Restart a tritonserver that died on its own (seen once: a segfault after SIGCONT), as the
        platform restarts a crashed container; each restart is noted for the report."""

        def watch() -> None:
            while not stop.wait(interval_s):
                with self.exclusive:
                    with self._lock:
                        server = self.server
                    code = server.wait(0) if server is not None else None
                    if code is None or stop.is_set():
                        continue
                    self.crash_restarts.append(f"tritonserver exited with {code} on its own; restarted")
                    self.kill()
                    self.start()

        thread = threading.Thread(target=watch, name="triton-supervisor", daemon=True)
        thread.start()
        return thread

    def signal(self, signum: int) -> None:
        """Send `signum` to tritonserver and its stubs (SIGSTOP / SIGCONT: a server that hangs)."""
        with self._lock:
            if self.server is not None:
                self.server.signal_group(signum)

    @property
    def pids(self) -> list[int]:
        """tritonserver and its Python-backend stubs."""
        with self._lock:
            pid = self.server.pid if self.server is not None else None
        return group_members(pid) if pid is not None else []


@dataclass
class Fleet:
    """Emulators, the job system on them, one Triton and the bridges."""

    emulators: GoogleEmulators
    jobs: LocalJobSystem
    triton: TritonProcess
    bridges: list[BridgeProcess]
    config: FleetConfig
    router: PushRouter | None = None

    def live_http_ports(self) -> list[int]:
        """Each bridge's HTTP port while its process runs (0 while it is down)."""
        return [bridge.http_port if bridge.pids else 0 for bridge in self.bridges]

    def push_to(self, endpoint: str) -> None:
        """Have the emulator push the jobs' subscription to `endpoint` ("" makes it a pull subscription
        again: what is left on it is then pulled)."""
        self.jobs.subscriber.modify_push_config(
            request={"subscription": self.jobs.subscription, "push_config": {"push_endpoint": endpoint}}
        )

    def bridge_environment(self) -> dict[str, str]:
        config = self.config
        push_mode = {"FLUXFILL_BRIDGE_MODE": "push", "FLUXFILL_BRIDGE_PUSH_AUTH": "false"}
        return {
            **self.emulators.environment(),
            "FLUXFILL_BRIDGE_PROJECT": PROJECT,
            "FLUXFILL_BRIDGE_SUBSCRIPTION": self.jobs.subscription_id,
            "FLUXFILL_BRIDGE_DEAD_LETTER_TOPIC": self.jobs.dead_letter_topic_id,
            "FLUXFILL_BRIDGE_BUCKET": self.jobs.bucket,
            "FLUXFILL_BRIDGE_TRITON_URL": self.triton.grpc_url,
            "FLUXFILL_BRIDGE_HTTP_HOST": "127.0.0.1",
            "FLUXFILL_BRIDGE_MAX_CONCURRENT_JOBS": str(config.concurrency),
            "FLUXFILL_BRIDGE_MAX_DELIVERY_ATTEMPTS": str(config.max_delivery_attempts),
            "FLUXFILL_BRIDGE_SUBSCRIPTION_MAX_DELIVERY_ATTEMPTS": str(config.policy_attempts),
            "FLUXFILL_BRIDGE_LEASE_S": str(config.lease_s),
            "FLUXFILL_BRIDGE_PROGRESS_INTERVAL_S": str(config.progress_interval_s),
            "FLUXFILL_BRIDGE_JOB_DEADLINE_S": str(config.job_deadline_s),
            "FLUXFILL_BRIDGE_UPLOAD_GRACE_S": str(config.upload_grace_s),
            "FLUXFILL_BRIDGE_READINESS_INTERVAL_S": "0.5",
            "FLUXFILL_BRIDGE_SHUTDOWN_GRACE_S": "10",
            "FLUXFILL_BRIDGE_TOPIC": self.jobs.topic_id,
            "FLUXFILL_BRIDGE_URGENT_TOPIC": self.jobs.urgent_topic_id,
            "FLUXFILL_BRIDGE_MAX_JOBS_IN_FLIGHT_PER_USER": str(config.max_jobs_in_flight_per_user),
            **(push_mode if config.delivery == "push" else {}),
            **(
                {"FLUXFILL_BRIDGE_URGENT_SUBSCRIPTION": self.jobs.urgent_subscription_id}
                if config.urgent_lane
                else {}
            ),
        }


@contextlib.contextmanager
def running_fleet(config: FleetConfig, run_dir: Path) -> Iterator[Fleet]:
    """Start everything (emulators, Triton, bridges); stop everything at the end, whatever happened."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with running_emulators() as emulators, contextlib.ExitStack() as stack:
        credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
        subscriber = pubsub_v1.SubscriberClient(credentials=credentials)
        stack.callback(subscriber.close)
        jobs = LocalJobSystem(
            pubsub_v1.PublisherClient(credentials=credentials),
            subscriber,
            storage.Client(project=PROJECT, credentials=credentials),
            firestore.Client(project=PROJECT, credentials=credentials),
            PROJECT,
        )
        pushed = config.delivery == "push"
        jobs.create(config.push_ack_deadline_s if pushed else config.ack_deadline_s, config.policy_attempts)
        triton = TritonProcess(run_dir)
        stack.callback(triton.stop)
        triton.start()
        supervisor_stop = threading.Event()
        supervisor = triton.supervise(supervisor_stop)
        stack.callback(supervisor.join)
        stack.callback(supervisor_stop.set)
        fleet = Fleet(emulators, jobs, triton, [], config)
        if pushed:
            fleet.router = stack.enter_context(running_router(fleet.live_http_ports))
            fleet.push_to(f"{fleet.router.url}/push")
        environment = fleet.bridge_environment()
        for index in range(config.bridges):
            name = f"bridge-{chr(ord('a') + index)}"
            bridge = BridgeProcess(name, environment, run_dir, config.shared_instance_id, triton.ports)
            stack.callback(_end_bridge, bridge)
            bridge.start()
            fleet.bridges.append(bridge)
        yield fleet


def _end_bridge(bridge: BridgeProcess) -> None:
    bridge.terminate(timeout_s=15.0)
