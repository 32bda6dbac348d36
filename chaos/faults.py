"""The fault schedule: Triton and bridges SIGKILLed at seeded moments, each restarted after a short outage.

A moment is a time within the publishing window (drawn between 10 % and 85 % of it), so every fault lands
while work is in flight; the faults run one after another on their own thread, each at least MIN_GAP_S after
the previous one recovered, so a restarted process is up and working before it is hit again.
"""

import random
import threading
import time
from dataclasses import dataclass, field

from chaos.fleet import Fleet

MIN_GAP_S = 2.0


@dataclass(frozen=True)
class Fault:
    """One planned kill: of `target` ("triton" or a bridge's name) `at_s` after publishing starts."""

    target: str
    at_s: float
    outage_s: float


@dataclass
class FaultLog:
    """What was actually done, for the report."""

    done: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def schedule(
    bridges: list[str], window_s: float, seed: int, triton_kills: int = 2, bridge_kills: int = 2
) -> list[Fault]:
    """Seeded kills of Triton and of random bridges within `window_s`, ordered by when they fire."""
    rng = random.Random(seed + 2)  # noqa: S311 (reproducible fault moments, not cryptography)
    targets = ["triton"] * triton_kills + [rng.choice(bridges) for _ in range(bridge_kills)]
    rng.shuffle(targets)
    faults = [
        Fault(target, round(window_s * rng.uniform(0.1, 0.85), 2), round(rng.uniform(0.2, 2.0), 2))
        for target in targets
    ]
    return sorted(faults, key=lambda fault: fault.at_s)


def inject(fleet: Fleet, faults: list[Fault], stop: threading.Event, log: FaultLog) -> threading.Thread:
    """Run the schedule on a thread; each fault waits for its moment, kills, waits its outage, restarts."""
    started = time.monotonic()

    def run() -> None:
        earliest = started
        for fault in faults:
            if stop.wait(max(0.0, max(started + fault.at_s, earliest) - time.monotonic())):
                return
            try:
                _apply(fleet, fault, log, time.monotonic() - started)
            except Exception as error:  # reported as a broken run, never swallowed
                log.errors.append(f"{fault.target}: {type(error).__name__}: {error}")
            earliest = time.monotonic() + MIN_GAP_S

    thread = threading.Thread(target=run, name="faults", daemon=True)
    thread.start()
    return thread


def _apply(fleet: Fleet, fault: Fault, log: FaultLog, at_s: float) -> None:
    started = time.monotonic()
    if fault.target == "triton":
        fleet.triton.kill()
        time.sleep(fault.outage_s)
        fleet.triton.start()
    else:
        bridge = next(b for b in fleet.bridges if b.name == fault.target)
        old = bridge.instance_id
        bridge.kill()
        time.sleep(fault.outage_s)
        bridge.start()
        log.done.append(
            f"t={at_s:.1f} s: SIGKILL {old}, restarted {fault.outage_s:.1f} s later as {bridge.instance_id}"
        )
        return
    log.done.append(
        f"t={at_s:.1f} s: SIGKILL tritonserver and its stubs, restarted {fault.outage_s:.1f} s later, "
        f"READY {time.monotonic() - started:.1f} s after the kill"
    )
