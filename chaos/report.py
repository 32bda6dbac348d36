"""Markdown tables of a run's figures, for the terminal and docs/reliability.md (the CLI's printer)."""

from collections.abc import Sequence
from pathlib import Path

from chaos.chaos_run import ChaosReport
from chaos.invariants import percentile
from chaos.queueing import FairnessReport, PriorityReport, Waits
from chaos.saturation import TRITON_QUEUE_BOUND, SaturationReport
from chaos.soak import MAX_FD_GROWTH_PER_1000, MAX_RSS_GROWTH_MB_PER_1000, SoakReport
from chaos.workload import EXPECTED, Kind


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def chaos_text(report: ChaosReport) -> str:
    options = report.options
    valid = sum(count for kind, count in report.mix.items() if EXPECTED[Kind(kind)].status == "done")
    lost = sum(c.broken for c in report.checks if c.name.startswith(("valid", "no job left")))
    duplicated = next((c.broken for c in report.checks if c.name == "valid job done exactly once"), 0)
    summary = table(
        ["jobs", "messages", "mix", "faults injected", "lost", "done twice", "settled in"],
        [
            [
                options.jobs,
                report.messages,
                ", ".join(f"{kind} {count}" for kind, count in report.mix.items()),
                len(report.faults),
                lost,
                duplicated,
                f"{report.settled_s:.0f} s",
            ]
        ],
    )
    checks = table(
        ["invariant", "checked", "broken", "result", "examples"],
        [[c.name, c.checked, c.broken, "ok" if c.ok else "BROKEN", c.examples or "—"] for c in report.checks],
    )
    values = report.latencies_s
    latency = table(
        ["end-to-end latency (publish to terminal write)", "p50", "p90", "p99", "max"],
        [
            [f"{len(values)} jobs with a session (valid {valid})"]
            + [f"{percentile(values, q):.2f} s" for q in (0.5, 0.9, 0.99, 1.0)]
        ],
    )
    lines = [summary, "", checks, "", latency, "", "Faults:"]
    lines += [f"- {fault}" for fault in report.faults] + [f"- FAILED: {e}" for e in report.fault_errors]
    lines += [f"- supervisor: {restart}" for restart in report.crash_restarts]
    lines.append(
        f"Dead letters received: {report.dead_letter_copies} for {report.dead_lettered_messages} messages "
        f"({report.policy_dead_letters} moved by "
        f"Pub/Sub's own policy); left on the jobs subscription after the bridges stopped: "
        f"{report.left_on_subscription}"
    )
    ended = ", ".join(f"{status} {count}" for status, count in report.cancels.items())
    waits = report.cancel_latencies_s
    lines.append(
        f"Cancelled by their users: {sum(report.cancels.values())}, ended {ended or 'none'}; from the cancel "
        f"to `cancelled`: p50 {percentile(waits, 0.5):.1f} s, max {percentile(waits, 1.0):.1f} s"
    )
    given_back = ", ".join(f"{cause} x {count}" for cause, count in report.retry_causes.items())
    lines.append(f"Deliveries given back, by cause: {given_back or 'none'}")
    if report.pushes is not None:
        answers, unanswered = report.pushes
        by_status = ", ".join(f"{status} x {count}" for status, count in sorted(answers.items()))
        lines.append(
            f"Delivery: push, through a router over the bridges (as Cloud Run's); the bridges answered "
            f"{by_status}; the router answered 503 x {unanswered} for a bridge that was down or hung"
        )
    lines += [f"Note: {note}" for note in report.notes]
    return "\n".join(lines)


def print_chaos(report: ChaosReport, run_dir: Path) -> None:
    print(chaos_text(report))
    print(f"Logs: {run_dir}  Result: {'PASS' if report.ok else 'FAIL'}")


def saturation_text(report: SaturationReport) -> str:
    ages = report.oldest_age_s
    trace = ", ".join(f"{at:.0f}s:{age:.0f}" for at, age in ages[:: max(1, len(ages) // 12)])
    return table(
        ["measure", "value", "bound", "result"],
        [
            ["fleet capacity (calibrated)", f"{report.capacity_per_s:.1f} jobs/s", "—", "—"],
            [
                "burst (10x capacity over the burst's length, published at once)",
                f"{report.burst_jobs} jobs",
                "—",
                "—",
            ],
            [
                "max jobs in flight per bridge",
                report.max_in_flight,
                report.in_flight_limit,
                "ok" if report.max_in_flight == report.in_flight_limit else "BROKEN",
            ],
            [
                "max Triton pending requests",
                f"{report.max_triton_pending:.0f}",
                TRITON_QUEUE_BOUND,
                "ok" if report.max_triton_pending <= TRITON_QUEUE_BOUND else "BROKEN",
            ],
            [
                "requests refused at Triton's queue bound (resent by the bridges)",
                f"{report.triton_refusals:.0f}",
                "> 0",
                "ok" if report.triton_refusals > 0 else "BROKEN (bound never reached)",
            ],
            [
                "oldest unfinished job age (s into burst: age s)",
                trace,
                "rises",
                "ok" if report.age_rose else "BROKEN",
            ],
            [
                "final statuses",
                report.statuses,
                f"done {report.burst_jobs}",
                "ok" if report.statuses == {"done": report.burst_jobs} else "BROKEN",
            ],
            ["drained in", f"{report.drained_s:.0f} s", "—", "—"],
            [
                "a job's inference phase, resends included (p50 / p99 / max)",
                " / ".join(f"{percentile(report.inference_s, q):.1f}" for q in (0.5, 0.99, 1.0)) + " s"
                if report.inference_s
                else "—",
                "—",
                "—",
            ],
        ],
    )


def print_saturation(report: SaturationReport, run_dir: Path) -> None:
    print(saturation_text(report))
    print(f"Logs: {run_dir}  Result: {'PASS' if report.ok else 'FAIL'}")


def soak_text(report: SoakReport) -> str:
    rows = []
    for series in report.series:
        first, last = series.points[0], series.points[-1]
        rss, fds = series.growth_per_1000()
        rows.append(
            [
                series.name,
                f"{first[1] / 2**20:.0f} → {last[1] / 2**20:.0f}",
                f"{rss:+.1f}",
                f"{first[2]} → {last[2]}",
                f"{fds:+.1f}",
            ]
        )
    header = (
        f"{report.jobs_done}/{report.jobs_published} jobs done in {report.options.duration_s:.0f} s at "
        f"{report.options.rate_per_s:g}/s; growth after a {30}% warm-up, limits "
        f"{MAX_RSS_GROWTH_MB_PER_1000:g} MB and {MAX_FD_GROWTH_PER_1000:g} fds per 1,000 jobs"
    )
    body = table(["process", "RSS MB", "RSS MB / 1,000 jobs", "open fds", "fds / 1,000 jobs"], rows)
    return header + "\n\n" + body


def print_soak(report: SoakReport, run_dir: Path) -> None:
    print(soak_text(report))
    print(f"Logs: {run_dir}  Result: {'PASS' if report.ok else 'FAIL'}")


def _in_durations(seconds: float, job_s: float) -> str:
    return f"{seconds:.2f} s ({seconds / job_s:.1f} jobs)"


def priority_text(report: PriorityReport) -> str:
    def row(name: str, waits: Waits) -> list[object]:
        return [
            name,
            f"{waits.done}/{waits.total}",
            _in_durations(waits.p(50), report.job_s),
            _in_durations(waits.p(99), report.job_s),
            _in_durations(max(waits.seconds, default=float("nan")), report.job_s),
        ]

    return (
        f"{report.bridges} bridges, {report.slots} slots; a job-duration (slot time per job) is "
        f"{report.job_s:.2f} s (median run, claim to final write: {report.run_s:.2f} s)\n\n"
        + table(
            ["jobs", "done", "queue time p50", "p99", "max"],
            [
                row("urgent (published while the backlog drains)", report.urgent),
                row("bulk (the backlog)", report.bulk),
            ],
        )
    )


def fairness_text(report: FairnessReport) -> str:
    rows = []
    for name, run in (("with the limit", report.limited), ("without (before)", report.unlimited)):
        others = ", ".join(f"{seconds / run.job_s:.1f}" for seconds in sorted(run.others.seconds))
        rows.append(
            [
                f"{name}: {run.limit or 'none'}",
                f"{run.job_s:.2f} s",
                others,
                ", ".join(f"{ratio:.1f}" for ratio in sorted(run.others_in_runs_behind)),
                f"{max(run.others_idle_slot_s, default=0.0):.2f} s",
                f"{run.flood.done}/{run.flood.total}",
            ]
        )
    return (
        f"{report.bridges} bridges, {report.slots} slots; one user publishes {report.flood_jobs} jobs, then "
        f"{report.limited.others.total} other users one each; goal: each waits at most bridges x limit = "
        f"{report.goal_durations} job-durations\n\n"
        + table(
            [
                "max_jobs_in_flight_per_user",
                "job-duration",
                "the other users' queue times (jobs)",
                "the same in the runs they waited behind",
                "longest of their waits with a slot free",
                "flood done",
            ],
            rows,
        )
    )


def print_priority(report: PriorityReport, run_dir: Path) -> None:
    print(priority_text(report))
    print(f"\nlogs: {run_dir}")


def print_fairness(report: FairnessReport, run_dir: Path) -> None:
    print(fairness_text(report))
    print(f"\nlogs: {run_dir}")
