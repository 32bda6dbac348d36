"""Soak: valid jobs at a steady rate for a duration; memory and descriptors sampled against jobs done.

Growth is the least-squares slope of each sample series over jobs done, after a warm-up share of the run
(imports, caches and pools filling up are not leaks), reported per 1,000 jobs.
"""

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from chaos import probes, traffic
from chaos.fleet import Fleet, FleetConfig, running_fleet
from chaos.workload import Kind, PlannedJob, images

WARM_UP_SHARE = 0.3
# "Clear growth": far above what a steady process shows over a few hundred jobs on this machine.
MAX_RSS_GROWTH_MB_PER_1000 = 50.0
MAX_FD_GROWTH_PER_1000 = 20.0


@dataclass(frozen=True)
class SoakOptions:
    duration_s: float = 1800.0
    rate_per_s: float = 3.0  # well below the 2-core fleet's capacity, so no backlog builds up
    seed: int = 7
    sample_every_s: float = 2.0
    steps: int = 2


@dataclass
class Series:
    """One process's samples: (jobs done, RSS bytes, open fds)."""

    name: str
    points: list[tuple[float, int, int]] = field(default_factory=list)

    def growth_per_1000(self) -> tuple[float, float]:
        """(RSS MB, fds) per 1,000 jobs after the warm-up."""
        points = self.points[int(len(self.points) * WARM_UP_SHARE) :]
        return _slope([(p[0], p[1] / 2**20) for p in points]) * 1000, _slope(
            [(p[0], p[2]) for p in points]
        ) * 1000


@dataclass
class SoakReport:
    options: SoakOptions
    jobs_published: int
    jobs_done: int
    series: list[Series]

    @property
    def ok(self) -> bool:
        grown = [
            s
            for s in self.series
            if (g := s.growth_per_1000())[0] > MAX_RSS_GROWTH_MB_PER_1000 or g[1] > MAX_FD_GROWTH_PER_1000
        ]
        return not grown and self.jobs_done == self.jobs_published


# With nothing finishing for this long (publishing over), the soak stops waiting for its backlog.
STALL_S = 60.0


def _slope(points: list[tuple[float, float]]) -> float:
    if len(points) < 3:
        return 0.0
    mean_x = sum(p[0] for p in points) / len(points)
    mean_y = sum(p[1] for p in points) / len(points)
    spread = sum((p[0] - mean_x) ** 2 for p in points)
    return 0.0 if spread == 0 else sum((p[0] - mean_x) * (p[1] - mean_y) for p in points) / spread


def _jobs(count: int, seed: int, steps: int) -> list[PlannedJob]:
    import json
    import random

    rng = random.Random(seed)  # noqa: S311 (reproducible images, not cryptography)
    original, mask = images(rng)  # one photo for all: the soak measures the service, not the uploads
    return [
        PlannedJob(
            f"k{i:06d}",
            Kind.VALID,
            f"u{i % 7}",
            f"k{i:06d}",
            json.dumps({"userId": f"u{i % 7}", "sessionId": f"k{i:06d}", "steps": steps}).encode(),
            1,
            original,
            mask,
        )
        for i in range(count)
    ]


def _sample(fleet: Fleet, series: dict[str, Series]) -> float:
    done = probes.bridges_total(
        (b.http_port for b in fleet.bridges), "fluxfill_bridge_jobs_total", 'outcome="done"'
    )
    processes = [(b.name, pid) for b in fleet.bridges for pid in b.pids]
    processes += [(probes.triton_role(pid), pid) for pid in fleet.triton.pids]
    for name, pid in processes:
        series.setdefault(name, Series(name)).points.append(
            (done, probes.rss_bytes(pid), probes.open_fds(pid))
        )
    return done


def run_soak(options: SoakOptions, run_dir: Path, config: FleetConfig | None = None) -> SoakReport:
    """Publish for `duration_s`, sampling all along, then wait for the backlog and report the slopes."""
    count = int(options.duration_s * options.rate_per_s)
    planned = _jobs(count, options.seed, options.steps)
    with running_fleet(config or FleetConfig(), run_dir) as fleet:
        traffic.prepare(fleet.jobs, planned)
        published = traffic.Published()
        publisher = threading.Thread(
            target=traffic.publish_all, args=(fleet.jobs, planned, options.rate_per_s, published), daemon=True
        )
        publisher.start()
        series: dict[str, Series] = {}
        done, last_done = 0.0, -1.0
        # The backlog is waited for while jobs keep finishing (a busy machine drains slower, not never);
        # a fleet that finishes nothing for STALL_S has stalled, and the report shows it.
        progressed = time.monotonic()
        while (publisher.is_alive() or done < count) and time.monotonic() - progressed < STALL_S:
            done = _sample(fleet, series)
            if done > last_done:
                last_done, progressed = done, time.monotonic()
            time.sleep(options.sample_every_s)
        documents = traffic.session_documents(fleet.jobs, planned)
    finished = sum(1 for d in documents.values() if d.get("status") == "done")
    return SoakReport(options, published.count, finished, list(series.values()))
