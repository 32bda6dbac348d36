"""The chaos run: publish the mix, kill Triton and bridges on schedule, let it settle, check it."""

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from chaos import faults, invariants, traffic
from chaos.fleet import Fleet, FleetConfig, running_fleet
from chaos.workload import Kind, PlannedJob, plan
from fluxfill.bridge.contract import DEAD_LETTER_CODE_ATTRIBUTE, ORIGINAL_MESSAGE_ID_ATTRIBUTE

TERMINAL = {"done", "failed", "cancelled"}


@dataclass(frozen=True)
class ChaosOptions:
    """One run's size and seed."""

    jobs: int = 500
    seed: int = 7
    rate_per_s: float = 10.0
    # The emulator keeps handing messages to a SIGKILLed bridge's dead stream; each comes back only after a
    # 60 s stream ack deadline, sometimes more than once (see docs/reliability.md).
    settle_timeout_s: float = 600.0
    fault_plan: faults.FaultPlan = field(default_factory=faults.FaultPlan)
    steps: int = 4
    delivery: Literal["pull", "push"] = "pull"  # chaos.fleet: as the worker pool or the push service

    @classmethod
    def quick_push(cls, seed: int = 7) -> "ChaosOptions":
        """The push service's quick run, `make chaos-push` (not in `make test`, near its 15 minutes): 32 jobs
        and the faults whose handling differs by delivery (a bridge killed mid-request, one killed while
        Firestore holds its final writes, Triton killed while pushes wait for it); the hangs and pauses are
        the quick run's (a hung bridge's request, the router's timeout: tests/unit/test_chaos_router.py)."""
        plan = faults.FaultPlan(
            triton_kills=1,
            triton_stub_kills=0,
            bridge_kills=1,
            triton_stops=0,
            bridge_stops=0,
            emulator_pauses=(),
            kills_in_firestore_pause=1,
            pause_s=6.0,
        )
        return cls(
            jobs=32,
            seed=seed,
            rate_per_s=1.6,
            settle_timeout_s=300.0,
            fault_plan=plan,
            steps=40,  # seconds a job, so that the kills find requests in flight
            delivery="push",
        )

    @classmethod
    def quick(cls, seed: int = 7) -> "ChaosOptions":
        """About 40 jobs over a ~25 s publishing window, one fault of each kind: the run `make test` runs."""
        plan = faults.FaultPlan(
            triton_kills=1, bridge_kills=1, emulator_pauses=("storage",), triton_stop_s=17.0, pause_s=6.0
        )
        return cls(jobs=40, seed=seed, rate_per_s=2.0, settle_timeout_s=300.0, fault_plan=plan)


@dataclass
class ChaosReport:
    """What a run did and found."""

    options: ChaosOptions
    mix: dict[str, int]
    messages: int
    faults: list[str]
    fault_errors: list[str]
    checks: list[invariants.Check]
    latencies_s: list[float]
    settled_s: float
    dead_letter_copies: int
    dead_lettered_messages: int  # distinct original messages among the copies
    policy_dead_letters: int  # moved by Pub/Sub's own dead-letter policy, not by the bridge
    left_on_subscription: int
    notes: list[str] = field(default_factory=list)
    crash_restarts: list[str] = field(default_factory=list)  # Triton dying on its own, restarted
    # Push: the bridges' answers by status, and how many the router answered 503 for (a bridge down or hung).
    pushes: tuple[dict[int, int], int] | None = None
    # Deliveries the bridges gave back, by the cause they logged (fluxfill.bridge.errors.RetryCause).
    retry_causes: dict[str, int] = field(default_factory=dict)
    # The jobs their users cancelled, by how they ended; and seconds from each cancel to its `cancelled`.
    cancels: dict[str, int] = field(default_factory=dict)
    cancel_latencies_s: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks) and not self.fault_errors


# As deploy/config.env ships it (a unit test keeps them equal): with the per-user limit on, jobs of the
# workload's seven users are parked and released while bridges and Triton die and hang around them.
SHIPPED_PER_USER_LIMIT = 2


def run_chaos(options: ChaosOptions, run_dir: Path, config: FleetConfig | None = None) -> ChaosReport:
    """Start the fleet, run the schedule, and check everything; the fleet is always stopped at the end."""
    planned = plan(options.jobs, options.seed, options.steps)
    order = traffic.publish_order(planned, options.seed)
    fleet_config = config or FleetConfig(
        max_jobs_in_flight_per_user=SHIPPED_PER_USER_LIMIT, delivery=options.delivery
    )
    with running_fleet(fleet_config, run_dir) as fleet:
        traffic.prepare(fleet.jobs, planned)
        published = traffic.Published()
        schedule = faults.schedule(
            [b.name for b in fleet.bridges], len(order) / options.rate_per_s, options.seed, options.fault_plan
        )
        stop, log = threading.Event(), faults.FaultLog()
        injector = faults.inject(fleet, schedule, stop, log)
        started = time.monotonic()
        traffic.publish_all(fleet.jobs, order, options.rate_per_s, published)
        injector.join()
        dead: list[Any] = []
        settled = _settle(fleet, planned, dead, started + options.settle_timeout_s)
        settled_s = time.monotonic() - started
        for bridge in fleet.bridges:
            bridge.terminate()
        if fleet.router is not None:
            fleet.push_to("")  # pulled below, what is left
        traffic.drain_dead_letters(fleet.jobs, dead)
        left = traffic.left_on_subscription(fleet.jobs, wait_s=3.0)
        logs = [log_path for b in fleet.bridges for log_path in b.logs]
        evidence = invariants.Evidence(
            planned,
            traffic.session_documents(fleet.jobs, planned),
            traffic.result_objects(fleet.jobs),
            dead,
            invariants.done_outcomes(logs),
            published.message_ids,
        )
        causes = dict(invariants.retry_causes(logs).most_common())
        cancels = Counter(
            str(evidence.documents.get(j.session, {}).get("status"))
            for j in planned
            if j.kind is Kind.CANCELLED
        )
    notes = [] if settled else [f"not settled within {options.settle_timeout_s:.0f} s"]
    return ChaosReport(
        options=options,
        mix={kind.value: sum(1 for j in planned if j.kind is kind) for kind in Kind},
        messages=published.count,  # a remade session's new job is published besides the order
        faults=log.done,
        fault_errors=log.errors,
        checks=invariants.check_all(evidence),
        latencies_s=invariants.latencies(evidence, published.first_at),
        settled_s=settled_s,
        dead_letter_copies=len(dead),
        dead_lettered_messages=len(
            {m.attributes.get(ORIGINAL_MESSAGE_ID_ATTRIBUTE) or bytes(m.data) for m in dead}
        ),
        policy_dead_letters=sum(1 for m in dead if DEAD_LETTER_CODE_ATTRIBUTE not in m.attributes),
        left_on_subscription=len(left),
        notes=notes,
        crash_restarts=list(fleet.triton.crash_restarts),
        pushes=None if fleet.router is None else (dict(fleet.router.answers), fleet.router.unanswered),
        retry_causes=causes,
        cancels=dict(cancels.most_common()),
        cancel_latencies_s=invariants.cancel_latencies(evidence, published.cancelled_at),
    )


def _settle(fleet: Fleet, planned: list[PlannedJob], dead: list[Any], deadline: float) -> bool:
    """Wait until every session is terminal, every expected dead letter arrived and every deleted session's
    job was logged orphaned (its message is looked at again until the fleet's upload grace is over), or the
    deadline; what is left of any message is counted after the bridges stop."""
    with_session = [j for j in planned if j.user and j.expectation.status is not None]
    # A remade session's deleted session's job is orphaned too (not yet made, or made after it).
    deleted = {j.session for j in planned if j.kind in (Kind.DELETED, Kind.REMADE)}
    expected_dead = sum(1 for j in planned if j.expectation.dead_letter)
    while time.monotonic() < deadline:
        traffic.drain_dead_letters(fleet.jobs, dead)
        documents = traffic.session_documents(fleet.jobs, with_session)
        finished = sum(1 for d in documents.values() if d.get("status") in TERMINAL)
        if finished == len(with_session) and len(dead) >= expected_dead and deleted <= _orphaned(fleet):
            return True
        time.sleep(1.0)
    return False


def _orphaned(fleet: Fleet) -> set[str]:
    """The sessions whose jobs a bridge has logged orphaned."""
    return set(invariants.logged_outcomes((path for b in fleet.bridges for path in b.logs), "orphaned"))
