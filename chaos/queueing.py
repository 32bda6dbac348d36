"""Who waits behind whom: urgent jobs behind a bulk backlog, and other users behind one user's flood.

Both runs use the real fleet (emulators, tritonserver, bridge processes). Queue time is a job's claim
(`startedAt`, the bridge's clock) minus the moment the app published it (taken just before the publish);
a job-duration is the slot time per job: the busy span times the slots over the jobs done, so what a slot
spends between jobs (ack, pull, claim) counts too. The median run (claim to final write) is reported beside.
"""

import itertools
import json
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chaos import traffic
from chaos.fleet import Fleet, FleetConfig, running_fleet
from chaos.invariants import percentile
from chaos.workload import Kind, PlannedJob, images

QUEUEING_FLEET = FleetConfig(bridges=2, concurrency=1)
SETTLE_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class QueueingOptions:
    bulk_jobs: int = 200
    urgent_jobs: int = 20
    urgent_every_s: float = 1.0
    flood_jobs: int = 300
    other_users: int = 5
    per_user_limit: int = 1
    fairness_concurrency: int = 2  # slots per bridge in the fairness run: the flood may hold one of them
    steps: int = 8
    seed: int = 7


@dataclass
class Waits:
    """Queue times (s) of one kind of job, and how many of that kind finished."""

    seconds: list[float] = field(default_factory=list)
    total: int = 0

    @property
    def done(self) -> int:
        return len(self.seconds)

    def p(self, q: float) -> float:
        """The q-th percentile (0-100), nearest rank."""
        return percentile(sorted(self.seconds), q / 100) if self.seconds else float("nan")


@dataclass
class PriorityReport:
    bridges: int
    slots: int
    job_s: float  # slot time per job
    run_s: float  # the median run
    bulk: Waits
    urgent: Waits

    @property
    def ok(self) -> bool:
        return self.bulk.done == self.bulk.total and self.urgent.done == self.urgent.total


@dataclass
class FairnessRun:
    limit: int
    job_s: float  # slot time per flood job, on the slots the flood may use (limit 1: its serial pace)
    run_s: float  # the median run
    others: Waits
    flood: Waits
    # Of each other user's wait, the seconds during which a slot was free (no job claimed and unfinished on
    # it): what the fleet could have saved. The rest was spent behind running jobs.
    others_idle_slot_s: list[float] = field(default_factory=list)
    # Each other user's wait in the runs of the jobs it waited behind (the median claim-to-final-write of the
    # jobs running at some moment of its wait): on a machine whose cores every running job shares, a job's
    # duration grows with the jobs beside it, which the flood's serial pace (job_s) leaves out.
    others_in_runs_behind: list[float] = field(default_factory=list)


@dataclass
class FairnessReport:
    bridges: int
    slots: int
    flood_jobs: int
    limited: FairnessRun
    unlimited: FairnessRun

    @property
    def goal_durations(self) -> int:
        return self.bridges * self.limited.limit

    @property
    def ok(self) -> bool:
        return all(run.others.done == run.others.total for run in (self.limited, self.unlimited)) and all(
            run.flood.done == run.flood.total for run in (self.limited, self.unlimited)
        )


def _planned(
    user: str, sessions: Sequence[str], steps: int, original: bytes, mask: bytes, **job: Any
) -> list[PlannedJob]:
    return [
        PlannedJob(
            session,
            Kind.VALID,
            user,
            session,
            json.dumps({"userId": user, "sessionId": session, "steps": steps, **job}).encode(),
            1,
            original,
            mask,
        )
        for session in sessions
    ]


def _publish(fleet: Fleet, planned: Sequence[PlannedJob], topic: str, into: dict[str, datetime]) -> None:
    for job in planned:
        into[job.key] = datetime.now(UTC)
        fleet.jobs.publisher.publish(topic, job.data).result(timeout=traffic.PUBLISH_TIMEOUT_S)


def _wait_all(fleet: Fleet, planned: Sequence[PlannedJob]) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        documents = traffic.session_documents(fleet.jobs, planned)
        finished = sum(1 for d in documents.values() if d.get("status") in {"done", "failed", "cancelled"})
        if finished == len(planned) or time.monotonic() > deadline:
            return documents
        time.sleep(1.0)


def _waits(
    planned: Sequence[PlannedJob], published: dict[str, datetime], docs: dict[str, dict[str, Any]]
) -> Waits:
    waits = Waits(total=len(planned))
    for job in planned:
        document = docs.get(job.session, {})
        if document.get("status") == "done" and job.key in published:
            waits.seconds.append((document["startedAt"] - published[job.key]).total_seconds())
    return waits


def _runs(docs: dict[str, dict[str, Any]]) -> list[tuple[datetime, datetime]]:
    """(claim, final write) of every done job."""
    return [(d["startedAt"], d["finishedAt"]) for d in docs.values() if d.get("status") == "done"]


def _waits_of_done(
    planned: Sequence[PlannedJob], published: dict[str, datetime], docs: dict[str, dict[str, Any]]
) -> Iterator[tuple[datetime, datetime]]:
    """(publication, claim) of each done job of `planned`."""
    for job in planned:
        document = docs.get(job.session, {})
        if document.get("status") == "done" and job.key in published:
            yield published[job.key], document["startedAt"]


def idle_slot_waits(
    planned: Sequence[PlannedJob],
    published: dict[str, datetime],
    docs: dict[str, dict[str, Any]],
    slots: int,
) -> list[float]:
    """For each done job of `planned`: the seconds between its publication and its claim during which fewer
    than `slots` jobs (of anyone, per their claim and final write) were running."""
    runs = _runs(docs)
    idle: list[float] = []
    for begin, end in _waits_of_done(planned, published, docs):
        # The moments the running count changes within the wait bound intervals of constant count.
        moments = sorted({begin, end, *(t for run in runs for t in run if begin < t < end)})
        free = 0.0
        for start, stop in itertools.pairwise(moments):
            running = sum(1 for claimed, finished in runs if claimed <= start < finished)
            if running < slots:
                free += (stop - start).total_seconds()
        idle.append(free)
    return idle


def waits_in_runs_behind(
    planned: Sequence[PlannedJob], published: dict[str, datetime], docs: dict[str, dict[str, Any]]
) -> list[float]:
    """For each done job of `planned`: its wait over the median run (claim to final write) of the done jobs
    that were running at some moment between its publication and its claim; 0 for a job that waited behind
    none."""
    runs = _runs(docs)
    ratios: list[float] = []
    for begin, end in _waits_of_done(planned, published, docs):
        behind = sorted(
            (finished - claimed).total_seconds()
            for claimed, finished in runs
            if claimed < end and finished > begin  # its own run begins at its claim: not counted
        )
        ratios.append((end - begin).total_seconds() / percentile(behind, 0.5) if behind else 0.0)
    return ratios


def _median_run_s(docs: dict[str, dict[str, Any]]) -> float:
    """The median job's run time: claim to final write (download, model, upload, session writes)."""
    runs = [
        (d["finishedAt"] - d["startedAt"]).total_seconds() for d in docs.values() if d.get("status") == "done"
    ]
    return percentile(sorted(runs), 0.5)


def _slot_s(docs: dict[str, dict[str, Any]], slots: int) -> float:
    """Slot time per job: the busy span times the slots, over the jobs done (pulls and acks included)."""
    done = [d for d in docs.values() if d.get("status") == "done"]
    span = (max(d["finishedAt"] for d in done) - min(d["startedAt"] for d in done)).total_seconds()
    return float(span * slots / len(done))


def run_priority(options: QueueingOptions, run_dir: Path) -> PriorityReport:
    """A bulk backlog, then urgent jobs at a steady rate while it drains."""
    config = replace(QUEUEING_FLEET, urgent_lane=True)
    original, mask = images(random.Random(options.seed))  # noqa: S311 (test images)
    bulk = _planned("bulk", [f"b{i:04d}" for i in range(options.bulk_jobs)], options.steps, original, mask)
    urgent = _planned(
        "urgent",
        [f"x{i:04d}" for i in range(options.urgent_jobs)],
        options.steps,
        original,
        mask,
        priority="urgent",
    )
    with running_fleet(config, run_dir / "priority") as fleet:
        traffic.prepare(fleet.jobs, bulk + urgent)
        published: dict[str, datetime] = {}
        _publish(fleet, bulk, fleet.jobs.topic, published)
        for job in urgent:
            time.sleep(options.urgent_every_s)
            _publish(fleet, [job], fleet.jobs.urgent_topic, published)
        docs = _wait_all(fleet, bulk + urgent)
    slots = config.bridges * config.concurrency
    return PriorityReport(
        config.bridges,
        slots,
        _slot_s(docs, slots),
        _median_run_s(docs),
        _waits(bulk, published, docs),
        _waits(urgent, published, docs),
    )


def _fairness_run(options: QueueingOptions, run_dir: Path, limit: int) -> FairnessRun:
    config = replace(
        QUEUEING_FLEET, concurrency=options.fairness_concurrency, max_jobs_in_flight_per_user=limit
    )
    original, mask = images(random.Random(options.seed))  # noqa: S311 (test images)
    flood = _planned(
        "flooder",
        [f"f{i:04d}" for i in range(options.flood_jobs)],
        options.steps,
        original,
        mask,
    )
    others = [
        job
        for index in range(options.other_users)
        for job in _planned(f"other{index}", [f"o{index:04d}"], options.steps, original, mask)
    ]
    with running_fleet(config, run_dir / f"fairness-limit-{limit}") as fleet:
        traffic.prepare(fleet.jobs, flood + others)
        published: dict[str, datetime] = {}
        _publish(fleet, flood, fleet.jobs.topic, published)
        # The others come once the flood is under way (three of its first 20 jobs done), as a single edit
        # arrives in a busy hour.
        started = time.monotonic()
        while time.monotonic() - started < 120:
            documents = traffic.session_documents(fleet.jobs, flood[:20])
            if sum(1 for d in documents.values() if d.get("status") == "done") >= 3:
                break
            time.sleep(0.2)
        threads = [
            threading.Thread(target=_publish, args=(fleet, [job], fleet.jobs.topic, published))
            for job in others
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        docs = _wait_all(fleet, flood + others)
    slots = config.bridges * config.concurrency
    flood_docs = {key: document for key, document in docs.items() if key.startswith("f")}
    return FairnessRun(
        limit,
        _slot_s(flood_docs, min(limit, slots) if limit else slots),
        _median_run_s(docs),
        _waits(others, published, docs),
        _waits(flood, published, docs),
        idle_slot_waits(others, published, docs, slots),
        waits_in_runs_behind(others, published, docs),
    )


def run_fairness(options: QueueingOptions, run_dir: Path) -> FairnessReport:
    """One user's flood, then single jobs of other users: with the per-user limit, and without it."""
    limited = _fairness_run(options, run_dir, options.per_user_limit)
    unlimited = _fairness_run(options, run_dir, 0)
    return FairnessReport(
        QUEUEING_FLEET.bridges,
        QUEUEING_FLEET.bridges * options.fairness_concurrency,
        options.flood_jobs,
        limited,
        unlimited,
    )
