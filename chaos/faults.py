"""The fault schedule: processes killed, processes that hang, dependencies that pause, at seeded moments.

Faults, each followed by recovery:
- `kill`: SIGKILL Triton (with its stubs) or a bridge; restarted after a short outage (a crashed container).
- `stub-kill`: SIGKILL the Python-backend stub of `flux_fill_stream` alone (an out-of-memory kill): Triton
  runs under the image's supervisor, which must stop it (status STUB_DIED_EXIT_CODE) unless Triton dies of it
  itself; then restarted.
- `stop`: SIGSTOP Triton past the run deadline, or a bridge past its lease, then SIGCONT (a process that hangs
  instead of dying: the bridge wakes up to find its job taken over; Triton's callers find it unanswering).
- `pause`: SIGSTOP an emulator (Firestore, Storage or Pub/Sub) longer than a job takes, then SIGCONT.
- `kill-in-pause`: pause Firestore, SIGKILL a bridge while its final writes wait on it (results uploaded,
  status not yet written), restart the bridge, resume Firestore.

A moment is a time within the publishing window (drawn between 10 % and 85 % of it), so every fault lands
while work is in flight; the faults run one after another on their own thread, each at least MIN_GAP_S after
the previous one recovered, so a recovered process is working before it is hit again.
"""

import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field

from chaos.fleet import Fleet
from fluxfill.client.triton_supervisor import STUB_DIED_EXIT_CODE, stub_processes
from fluxfill.inpaint.contract import STREAM_MODEL_NAME

# How long the supervisor may take to notice a dead stub and stop Triton (it checks every second).
STUB_DEATH_NOTICED_S = 60.0

MIN_GAP_S = 2.0
EMULATORS = ("firestore", "storage", "pubsub")


@dataclass(frozen=True)
class Fault:
    """One planned fault: `action` on `target` ("triton", a bridge's name or an emulator) at `at_s`."""

    target: str
    at_s: float
    outage_s: float
    action: str = "kill"


@dataclass(frozen=True)
class FaultPlan:
    """How many faults of each kind a run gets, and how long the hangs last."""

    triton_kills: int = 2
    triton_stub_kills: int = 1
    bridge_kills: int = 2
    triton_stops: int = 1
    bridge_stops: int = 1
    emulator_pauses: tuple[str, ...] = EMULATORS
    kills_in_firestore_pause: int = 1
    triton_stop_s: float = 18.0  # past the fleet's 15 s run deadline
    bridge_stop_s: float = 8.0  # past the fleet's 4 s lease
    pause_s: float = 8.0


@dataclass
class FaultLog:
    """What was actually done, for the report."""

    done: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def schedule(bridges: list[str], window_s: float, seed: int, plan: FaultPlan | None = None) -> list[Fault]:
    """Seeded faults of every kind in `plan` within `window_s`, ordered by when they fire."""
    plan = plan or FaultPlan()
    rng = random.Random(seed + 2)  # noqa: S311 (reproducible fault moments, not cryptography)
    specs: list[tuple[str, str, float]] = [("triton", "kill", 0.0)] * plan.triton_kills
    specs += [("triton", "stub-kill", 0.0)] * plan.triton_stub_kills
    specs += [(rng.choice(bridges), "kill", 0.0) for _ in range(plan.bridge_kills)]
    specs += [("triton", "stop", plan.triton_stop_s)] * plan.triton_stops
    specs += [(rng.choice(bridges), "stop", plan.bridge_stop_s) for _ in range(plan.bridge_stops)]
    specs += [(emulator, "pause", plan.pause_s) for emulator in plan.emulator_pauses]
    specs += [
        (rng.choice(bridges), "kill-in-pause", plan.pause_s) for _ in range(plan.kills_in_firestore_pause)
    ]
    rng.shuffle(specs)
    faults = [
        Fault(
            target,
            round(window_s * rng.uniform(0.1, 0.85), 2),
            outage or round(rng.uniform(0.2, 2.0), 2),
            action,
        )
        for target, action, outage in specs
    ]
    return sorted(faults, key=lambda fault: fault.at_s)


def inject(fleet: Fleet, faults: list[Fault], stop: threading.Event, log: FaultLog) -> threading.Thread:
    """Run the schedule on a thread; each fault waits for its moment, strikes, waits its outage, recovers."""
    started = time.monotonic()

    def run() -> None:
        earliest = started
        for fault in faults:
            if stop.wait(max(0.0, max(started + fault.at_s, earliest) - time.monotonic())):
                return
            try:
                log.done.append(_apply(fleet, fault, time.monotonic() - started))
            except Exception as error:  # reported as a broken run, never swallowed
                log.errors.append(f"{fault.target} {fault.action}: {type(error).__name__}: {error}")
            earliest = time.monotonic() + MIN_GAP_S

    thread = threading.Thread(target=run, name="faults", daemon=True)
    thread.start()
    return thread


def _signal_emulator(fleet: Fleet, name: str, signum: int) -> None:
    getattr(fleet.emulators, name).signal_group(signum)


def _apply(fleet: Fleet, fault: Fault, at_s: float) -> str:
    started = time.monotonic()
    when, outage = f"t={at_s:.1f} s", f"{fault.outage_s:.1f} s"
    if fault.target in EMULATORS:
        _signal_emulator(fleet, fault.target, signal.SIGSTOP)
        time.sleep(fault.outage_s)
        _signal_emulator(fleet, fault.target, signal.SIGCONT)
        return f"{when}: SIGSTOP the {fault.target} emulator for {outage}, then SIGCONT"
    if fault.target == "triton":
        with fleet.triton.exclusive:
            return _strike_triton(fleet, fault, when, outage, started)
    bridge = next(b for b in fleet.bridges if b.name == fault.target)
    old = bridge.incarnation_name
    if fault.action == "stop":
        bridge.signal(signal.SIGSTOP)
        time.sleep(fault.outage_s)
        bridge.signal(signal.SIGCONT)
        return f"{when}: SIGSTOP {old} for {outage} (past its lease), then SIGCONT"
    if fault.action == "kill-in-pause":
        _signal_emulator(fleet, "firestore", signal.SIGSTOP)
        try:
            time.sleep(fault.outage_s / 2)  # final writes of running jobs now wait on Firestore
            bridge.kill()
            bridge.start()
            time.sleep(fault.outage_s / 2)
        finally:
            _signal_emulator(fleet, "firestore", signal.SIGCONT)
        return (
            f"{when}: SIGSTOP Firestore, SIGKILL {old} while its writes waited, restarted as "
            f"{bridge.incarnation_name}, SIGCONT Firestore {outage} after the stop"
        )
    bridge.kill()
    time.sleep(fault.outage_s)
    bridge.start()
    return f"{when}: SIGKILL {old}, restarted {outage} later as {bridge.incarnation_name}"


def _stub_of(pids: list[int], model: str) -> int:
    """The Python-backend stub serving `model` among the children of Triton's processes."""
    for pid in pids:
        for stub, served in stub_processes(pid).items():
            if served == model:
                return stub
    raise RuntimeError(f"no stub of {model} among Triton's processes {pids}")


def _strike_triton(fleet: Fleet, fault: Fault, when: str, outage: str, started: float) -> str:
    if fault.action == "stub-kill":
        server = fleet.triton.server
        if server is None:
            raise RuntimeError("Triton is not running")
        os.kill(_stub_of(fleet.triton.pids, STREAM_MODEL_NAME), signal.SIGKILL)
        status = server.wait(STUB_DEATH_NOTICED_S)
        if status is None:
            raise RuntimeError(
                f"the {STREAM_MODEL_NAME} stub was killed and Triton's supervisor did not stop it within "
                f"{STUB_DEATH_NOTICED_S:g} s: it would serve a model failing every request"
            )
        # Either ends what matters (no server left answering with a dead stub): the supervisor's stop, or
        # Triton's own abort, as when the stub died holding the backend's shared-memory lock
        # (boost::interprocess::lock_exception, status 134: a 500-job push run, 2026-12-06).
        how = "the supervisor stopped Triton" if status == STUB_DIED_EXIT_CODE else "Triton died of it"
        noticed = time.monotonic() - started
        fleet.triton.kill()  # what the stop left behind
        fleet.triton.start()
        return (
            f"{when}: SIGKILL the {STREAM_MODEL_NAME} stub alone; {how} {noticed:.1f} s later (status "
            f"{status}), restarted, READY {time.monotonic() - started:.1f} s after the kill"
        )
    if fault.action == "stop":
        fleet.triton.signal(signal.SIGSTOP)
        time.sleep(fault.outage_s)
        fleet.triton.signal(signal.SIGCONT)
        return f"{when}: SIGSTOP tritonserver and its stubs for {outage} (past the run deadline), SIGCONT"
    fleet.triton.kill()
    time.sleep(fault.outage_s)
    fleet.triton.start()
    return (
        f"{when}: SIGKILL tritonserver and its stubs, restarted {outage} later, "
        f"READY {time.monotonic() - started:.1f} s after the kill"
    )
