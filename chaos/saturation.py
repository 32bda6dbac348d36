"""Saturation: a burst of what the fleet processes in ten times the burst's length, watched while it drains.

The fleet runs more jobs at once than Triton's queue holds, so the burst meets the queue's bound: Triton
refuses the excess at once and each bridge resends it (back-pressure), and no job may fail because of it.

Capacity is measured first (a calibration batch through the same fleet, warmed up: the first jobs of a fresh
fleet pay its start-up, and a capacity measured cold made a burst too small to build a backlog); the burst
is ten times that rate over `burst_s`, published at once. Published at that rate instead, it built a backlog
only when the fleet ran as fast as it had calibrated: on a machine whose other load fell between calibration
(1.9 jobs/s) and burst (about 9), the 56 jobs of a quick run drained in 6 s, the oldest age never past 2 s,
and the run failed; all at once, the backlog is there while the fleet runs up to ten times faster than
calibrated. While it drains, the sampler reads each bridge's in-flight gauge,
Triton's pending requests and the age of the oldest job not yet finished (what Pub/Sub's
oldest_unacked_message_age shows in production).
"""

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from chaos import probes, traffic
from chaos.fleet import Fleet, FleetConfig, running_fleet
from chaos.soak import _jobs
from chaos.workload import PlannedJob

# Triton's max_queue_size of flux_fill_stream, plus the one request executing.
TRITON_QUEUE_BOUND = 8 + 1
CALIBRATION_JOBS = 20
# The burst's publishing rate: as fast as the publisher goes.
AT_ONCE_PER_S = 1000.0
# More jobs in flight over the fleet (2 x 6) than Triton's queue holds, so the burst meets its bound. A job
# waits behind up to 11 others there: the chaos runs' 15 s deadline failed one when the machine ran ~2x slower
# than usual (2026-12-03); this run is about back-pressure, so its deadline is 60 s (production's is 300 s).
SATURATION_FLEET = FleetConfig(bridges=2, concurrency=6, job_deadline_s=60.0)


@dataclass(frozen=True)
class SaturationOptions:
    quick: bool = False
    seed: int = 7
    burst_s: float = 10.0
    steps: int = 2


@dataclass
class SaturationReport:
    capacity_per_s: float
    burst_jobs: int
    max_in_flight: int
    in_flight_limit: int
    max_triton_pending: float
    triton_refusals: float = 0.0  # requests the full queue refused, each resent by its bridge
    oldest_age_s: list[tuple[float, float]] = field(default_factory=list)  # (seconds into the burst, age)
    statuses: dict[str, int] = field(default_factory=dict)
    drained_s: float = 0.0
    # Each done job's inference phase (its session's timings): refusals and resends at Triton's full queue,
    # the wait in Triton's queue and the run. Its spread shows whether the refused jobs took turns.
    inference_s: list[float] = field(default_factory=list)

    @property
    def age_rose(self) -> bool:
        ages = [age for _, age in self.oldest_age_s]
        return len(ages) > 2 and max(ages) > 3 * max(ages[0], 1.0)

    @property
    def ok(self) -> bool:
        return (
            self.max_in_flight == self.in_flight_limit
            and self.max_triton_pending <= TRITON_QUEUE_BOUND
            and self.triton_refusals > 0
            and self.age_rose
            and self.statuses == {"done": self.burst_jobs}
        )


def _wait_done(fleet: Fleet, jobs: list[PlannedJob], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        documents = traffic.session_documents(fleet.jobs, jobs)
        if sum(1 for d in documents.values() if d.get("status") == "done") == len(jobs):
            return
        time.sleep(0.5)


def _run_batch(fleet: Fleet, jobs: list[PlannedJob]) -> float:
    """Publish the jobs at once and wait until all are done; the seconds that took."""
    traffic.prepare(fleet.jobs, jobs)
    started = time.monotonic()
    traffic.publish_all(fleet.jobs, jobs, AT_ONCE_PER_S, traffic.Published())
    _wait_done(fleet, jobs, 120.0)
    return time.monotonic() - started


def run_saturation(
    options: SaturationOptions, run_dir: Path, config: FleetConfig | None = None
) -> SaturationReport:
    """Calibrate, publish a burst of ten times capacity over `burst_s` at once, sample until drained."""
    config = config or SATURATION_FLEET
    burst_s = 3.0 if options.quick else options.burst_s
    with running_fleet(config, run_dir) as fleet:
        warm_up_jobs = config.bridges * config.concurrency  # one per job slot: every slot has run once
        batches = _jobs(warm_up_jobs + CALIBRATION_JOBS, options.seed, options.steps)
        _run_batch(fleet, batches[:warm_up_jobs])
        capacity = CALIBRATION_JOBS / _run_batch(fleet, batches[warm_up_jobs:])
        # Fresh session ids after the batches': _jobs numbers them from 0.
        count = len(batches) + int(10 * capacity * burst_s)
        burst = _jobs(count, options.seed, options.steps)[len(batches) :]
        traffic.prepare(fleet.jobs, burst)
        report = SaturationReport(capacity, len(burst), 0, config.concurrency, 0.0)
        published = traffic.Published()
        threading.Thread(
            target=traffic.publish_all, args=(fleet.jobs, burst, AT_ONCE_PER_S, published), daemon=True
        ).start()
        started = time.monotonic()
        while time.monotonic() - started < 600:
            _sample(fleet, burst, published, report, time.monotonic() - started)
            if published.count == len(burst) and report.oldest_age_s and report.oldest_age_s[-1][1] == 0:
                break
        report.drained_s = time.monotonic() - started
        report.triton_refusals = probes.bridges_total(
            (bridge.http_port for bridge in fleet.bridges),
            "fluxfill_bridge_triton_errors_total",
            '"TritonBusyError"',
        )
        documents = traffic.session_documents(fleet.jobs, burst)
    for document in documents.values():
        report.statuses[str(document.get("status"))] = report.statuses.get(str(document.get("status")), 0) + 1
        inference = (document.get("timings") or {}).get("inference")
        if document.get("status") == "done" and isinstance(inference, int | float):
            report.inference_s.append(float(inference))
    report.inference_s.sort()
    return report


def _sample(
    fleet: Fleet, burst: list[PlannedJob], published: traffic.Published, report: SaturationReport, at_s: float
) -> None:
    for bridge in fleet.bridges:
        samples = probes.scrape(f"http://127.0.0.1:{bridge.http_port}/metrics")
        report.max_in_flight = max(
            report.max_in_flight, int(probes.total(samples, "fluxfill_bridge_jobs_in_flight"))
        )
    pending = probes.total(probes.scrape(fleet.triton.metrics_url), "nv_inference_pending_request_count")
    report.max_triton_pending = max(report.max_triton_pending, pending)
    with published.lock:
        first_at = dict(published.first_at)
    documents = traffic.session_documents(fleet.jobs, [j for j in burst if j.key in first_at])
    waiting = [first_at[k] for k, d in documents.items() if d.get("status") != "done" and k in first_at]
    age = (datetime.now(UTC) - min(waiting)).total_seconds() if waiting else 0.0
    report.oldest_age_s.append((round(at_s, 1), round(age, 1)))
    time.sleep(0.5)
