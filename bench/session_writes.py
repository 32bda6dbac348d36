"""Session writes per job as the app's listener sees them: every heartbeat writing (until 2026-12-07) vs
heartbeats that write only new progress or a due lease renewal (now).

Each write of the session document reaches every listener the app keeps on it (a phone: a snapshot over its
radio, billed as a read), and Firestore advises at most one sustained write a second to a document. The
real bridge (`build_bridge`: pull, claims, heartbeats, status writes) runs in this process against the
emulators; its model is a Triton with one instance: one run at a time, the others wait in its queue without
a step, as jobs behind others do on one GPU. A Firestore listener per session counts the snapshots from the
claim to the end. The two heartbeat rules run one after the other, in alternating order, on fresh jobs;
"every heartbeat writes" is the code of now with `sessions.LEASE_RENEWED_AFTER_SHARE` at 0, which makes
every heartbeat's lease renewal due, exactly as before.

Run: `python -m bench.session_writes [--quick]` (needs Java for the emulators, as the integration tests).
"""

import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.bridge_throughput import PaintingModel, emulator_clients, job_images
from bench.common import markdown_table, parser, pyplot, report, save_plot
from fluxfill.bridge import sessions
from fluxfill.bridge.errors import JobCancelledError
from fluxfill.bridge.logs import configure_logging
from fluxfill.bridge.ports import InferenceRequest, InferenceResult, ProgressCallback, RunControl
from tests.integration.bridge.harness import JobSystem, running_bridge, wait_until

RULES = {"every heartbeat writes (until 2026-12-07)": 0.0, "due renewals and progress (now)": None}
TERMINAL = {"done", "failed", "cancelled"}


class OneInstanceModel(PaintingModel):
    """bridge_throughput's painting model as a Triton with one model instance: runs one at a time, `steps`
    steps of `step_s` each, progress reported per step; a run waiting for the instance reports nothing."""

    name = "one-instance"

    def __init__(self, steps: int, step_s: float) -> None:
        self._steps, self._step_s = steps, step_s
        self._instance = threading.Lock()

    def infer(
        self, request: InferenceRequest, *, on_progress: ProgressCallback, control: RunControl
    ) -> InferenceResult:
        with self._instance:
            for step in range(1, self._steps + 1):
                if control.cancel.wait(self._step_s):
                    raise JobCancelledError(f"cancelled after step {step - 1}")
                on_progress(step, self._steps)
        return super().infer(request, on_progress=on_progress, control=control)


class SnapshotCounter:
    """The snapshots a listener on one session receives from its claim (processing) to its end."""

    def __init__(self) -> None:
        self.count = 0
        self.status = ""
        self._lock = threading.Lock()

    def __call__(self, snapshots: list[Any], *_: object) -> None:
        for snapshot in snapshots:
            status = (snapshot.to_dict() or {}).get("status", "")
            with self._lock:
                if status == "processing" or self.status == "processing":
                    self.count += 1
                self.status = status


def run_rule(
    clients: tuple[Any, ...], share: float | None, jobs: int, model: OneInstanceModel
) -> tuple[list[int], float]:
    """Snapshots per job and the seconds until all were done, with every job published at once."""
    system = JobSystem(*clients)
    system.create()
    images = job_images()
    sessions_made = [system.new_job(*images) for _ in range(jobs)]
    counters = [SnapshotCounter() for _ in sessions_made]
    watches = [
        system.document(user, session).on_snapshot(counter)
        for (user, session), counter in zip(sessions_made, counters, strict=True)
    ]
    settings = system.settings("127.0.0.1:1", max_concurrent_jobs=jobs, progress_interval_s=1.0)
    kept = sessions.LEASE_RENEWED_AFTER_SHARE
    if share is not None:
        sessions.LEASE_RENEWED_AFTER_SHARE = share
    try:
        for user, session in sessions_made:
            system.publish({"userId": user, "sessionId": session, "steps": 1, "seed": 1})
        with running_bridge(settings, model) as bridge:
            started = time.perf_counter()
            wait_until(lambda: bridge.counted("done") >= jobs, timeout_s=120 + 30 * jobs)
            elapsed = time.perf_counter() - started
        wait_until(lambda: all(counter.status in TERMINAL for counter in counters), timeout_s=30)
        time.sleep(1.0)  # the last snapshots still on their way
    finally:
        sessions.LEASE_RENEWED_AFTER_SHARE = kept
        for watch in watches:
            watch.unsubscribe()  # type: ignore[no-untyped-call]
    return [counter.count for counter in counters], elapsed


def plot(results: dict[str, list[int]], plot_dir: Path) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    width = 0.4
    for index, (rule, counts) in enumerate(results.items()):
        positions = np.arange(len(counts)) + index * width
        axis.bar(positions, counts, width, label=rule)
    axis.set_xlabel("job, fewest snapshots first (the later a job ran, the longer it waited in the queue)")
    axis.set_ylabel("session snapshots the app received")
    axis.set_title("Session writes per job (one model instance, jobs queued behind each other)")
    axis.legend(fontsize=8)
    save_plot(figure, plot_dir, "session_writes")


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__).parse_args(argv)
    configure_logging("WARNING", sys.stderr)
    jobs, steps, step_s = (3, 3, 0.5) if args.quick else (6, 8, 1.0)
    counts: dict[str, list[list[int]]] = {rule: [] for rule in RULES}
    seconds: dict[str, list[float]] = {rule: [] for rule in RULES}
    rounds = 1 if args.quick else 2
    with emulator_clients() as clients:
        for index in range(rounds):
            order = list(RULES) if index % 2 == 0 else list(reversed(RULES))
            for rule in order:
                per_job, elapsed = run_rule(clients, RULES[rule], jobs, OneInstanceModel(steps, step_s))
                counts[rule].append(sorted(per_job))
                seconds[rule].append(elapsed)
    means = {rule: statistics.fmean(n for run in runs for n in run) for rule, runs in counts.items()}
    before, now = (means[rule] for rule in RULES)
    rows = [
        [
            rule,
            f"{means[rule]:.1f}",
            max(max(run) for run in counts[rule]),
            f"{statistics.fmean(seconds[rule]):.1f}",
            f"{before / means[rule]:.1f}x" if rule != next(iter(RULES)) else "1x",
        ]
        for rule in RULES
    ]
    headers = ["heartbeats", "snapshots per job", "most for one job", "s for all jobs", "fewer than before"]
    notes = [
        f"{jobs} jobs published at once to one bridge ({jobs} slots), a model of one instance: {steps} steps "
        f"of {step_s:g} s a run, so the k-th job waits (k-1) runs without a step; progress_interval_s 1, "
        f"lease_s 60; {rounds} round(s) of each rule, alternating which runs first",
        "snapshots: what a Firestore listener on each session received from the claim (processing) to the "
        "end, the final write included: the app's view of the bridge's writes",
        f"ratio of the means: {before / now:.1f}x fewer with the rule of now",
    ]
    report("Session writes per job (heartbeats)", markdown_table(headers, rows), notes)
    mean_by_job = {
        rule: [round(statistics.fmean(run[k] for run in runs)) for k in range(jobs)]
        for rule, runs in counts.items()
    }
    plot(mean_by_job, args.plot_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
