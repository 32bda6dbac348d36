"""The chaos harness's own logic: the plan, the schedule, and invariants that do break on bad evidence."""

import dataclasses
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from chaos import faults, invariants, traffic
from chaos.chaos_run import ChaosOptions
from chaos.fleet import FleetConfig
from chaos.traffic import publish_order
from chaos.workload import CANCEL_WITHIN_S, Kind, PlannedJob, plan
from fluxfill.bridge import sessions


def good_evidence() -> invariants.Evidence:
    """Evidence of a perfect run of a small plan: every job ended exactly as expected."""
    planned = plan(20, seed=3)
    documents: dict[str, dict[str, Any]] = {}
    results: dict[str, list[str]] = {}
    dead: list[Any] = []
    message_ids: dict[str, list[str]] = {}
    for index, job in enumerate(planned):
        message_ids[job.key] = [f"m{index}-{copy}" for copy in range(job.copies)]
        expected = job.expectation
        if expected.status == "done":
            documents[job.session] = {
                "status": "done",
                "result": {"paths": {"edited": "x/edited.png"}, "format": "png"},
                "model": {"seed": json.loads(job.data)["seed"]},
            }
            results[job.session] = ["edited.png", "preview.jpg"]
        elif expected.status is not None:
            documents[job.session] = {"status": expected.status, "error": {"code": expected.code}}
        if expected.dead_letter:
            attributes = {"fluxfillErrorCode": expected.code, "fluxfillOriginalMessageId": f"m{index}-0"}
            dead.append(SimpleNamespace(attributes=attributes, message_id=f"d{index}"))
    done = Counter(j.session for j in planned if j.expectation.status == "done")
    return invariants.Evidence(planned, documents, results, dead, done, message_ids)


def first(evidence: invariants.Evidence, kind: Kind) -> PlannedJob:
    return next(job for job in evidence.planned if job.kind is kind)


def broken(evidence: invariants.Evidence) -> dict[str, int]:
    return {check.name: check.broken for check in invariants.check_all(evidence) if not check.ok}


def test_a_perfect_run_breaks_nothing_and_checks_every_job() -> None:
    checks = invariants.check_all(good_evidence())
    assert all(check.ok for check in checks)
    assert all(check.checked > 0 for check in checks)


def test_a_job_done_twice_is_caught() -> None:
    evidence = good_evidence()
    evidence.done_logged[first(evidence, Kind.DUPLICATE).session] = 2
    assert broken(evidence) == {"valid job done exactly once": 1}


def test_a_lost_job_is_caught_as_lost_and_unfinished() -> None:
    evidence = good_evidence()
    job = first(evidence, Kind.VALID)
    evidence.documents[job.session] = {"status": "processing", "owner": "bridge-a-1"}
    del evidence.results[job.session]
    assert broken(evidence) == {
        "valid job done exactly once": 1,
        "one result object set per valid job": 1,
        "no job left queued or processing": 1,
    }


def test_a_remade_session_run_with_the_deleted_sessions_job_is_caught() -> None:
    evidence = good_evidence()
    job = first(evidence, Kind.REMADE)
    assert job.earlier is not None
    evidence.documents[job.session]["model"] = {"seed": json.loads(job.earlier)["seed"]}
    assert broken(evidence) == {"a session made again runs its own job": 1}


def test_a_remade_session_is_made_again_past_the_fleets_grace_and_the_bridges_clock_margin() -> None:
    """Made again sooner, the bridge cannot tell the two sessions apart (by design), and may run the deleted
    one's job on it."""
    assert FleetConfig().upload_grace_s + sessions.CLOCKS_APART_S < traffic.REMAKE_AFTER_S
    job = next(job for job in plan(40, seed=1) if job.kind is Kind.REMADE)
    assert job.earlier is not None
    assert json.loads(job.earlier)["seed"] != json.loads(job.data)["seed"]
    assert {k: v for k, v in json.loads(job.earlier).items() if k != "seed"} == {
        k: v for k, v in json.loads(job.data).items() if k != "seed"
    }


def test_a_cancelled_job_done_once_before_its_cancel_breaks_nothing() -> None:
    evidence = good_evidence()
    job = first(evidence, Kind.CANCELLED)
    evidence.documents[job.session] = {"status": "done", "result": {"paths": {"edited": "x/edited.jpg"}}}
    evidence.results[job.session] = ["edited.jpg", "preview.jpg"]
    evidence.done_logged[job.session] = 1
    assert broken(evidence) == {}


@pytest.mark.parametrize(
    ("document", "objects", "done_logged"),
    [
        ({"status": "cancelled", "error": {"code": "cancelled"}}, ["edited.jpg", "preview.jpg"], 0),
        ({"status": "cancelled", "error": {"code": "cancelled"}}, [], 1),
        ({"status": "failed", "error": {"code": "retries_exhausted"}}, [], 0),
        ({"status": "processing"}, [], 0),
        (
            {"status": "done", "result": {"paths": {"edited": "x/edited.jpg"}}},
            ["edited.jpg", "preview.jpg"],
            2,
        ),
        ({"status": "done", "result": {"paths": {"edited": "x/edited.jpg"}}}, [], 1),
    ],
    ids=["results-kept", "ran-after", "failed", "running", "done-twice", "done-without-results"],
)
def test_a_cancelled_job_that_did_not_end_once_is_caught(
    document: dict[str, Any], objects: list[str], done_logged: int
) -> None:
    evidence = good_evidence()
    job = first(evidence, Kind.CANCELLED)
    evidence.documents[job.session] = document
    evidence.done_logged[job.session] = done_logged
    if objects:
        evidence.results[job.session] = objects
    assert "a cancelled job ends cancelled, or done once" in broken(evidence)


def test_a_cancel_is_written_within_its_window_after_publication_and_only_for_cancelled_jobs() -> None:
    jobs = plan(200, seed=2)
    delays = [j.cancel_after_s for j in jobs if j.kind is Kind.CANCELLED]
    assert len(delays) == 10
    assert all(d is not None and 0 <= d <= CANCEL_WITHIN_S for d in delays)
    assert max(d for d in delays if d is not None) - min(d for d in delays if d is not None) > 5, "spread"
    assert all(j.cancel_after_s is None for j in jobs if j.kind is not Kind.CANCELLED)


def test_a_cancel_latency_runs_from_the_cancel_to_the_cancelled_write() -> None:
    evidence = good_evidence()
    job = first(evidence, Kind.CANCELLED)
    cancelled = datetime(2026, 1, 1, tzinfo=UTC)
    evidence.documents[job.session]["finishedAt"] = cancelled + timedelta(seconds=2)
    assert invariants.cancel_latencies(evidence, {job.key: cancelled}) == [2.0]


def test_a_missing_preview_is_caught() -> None:
    evidence = good_evidence()
    evidence.results[first(evidence, Kind.VALID).session] = ["edited.png"]
    assert broken(evidence) == {"one result object set per valid job": 1}


def test_an_edited_object_in_another_format_than_the_session_says_is_caught() -> None:
    evidence = good_evidence()
    evidence.results[first(evidence, Kind.VALID).session] = ["edited.jpg", "preview.jpg"]
    assert broken(evidence) == {"one result object set per valid job": 1}


def test_a_wrong_error_code_is_caught() -> None:
    evidence = good_evidence()
    evidence.documents[first(evidence, Kind.CORRUPT_IMAGE).session]["error"] = {"code": "retries_exhausted"}
    assert broken(evidence) == {"invalid job failed with its specific code": 1}


@pytest.mark.parametrize("kind", [Kind.MALFORMED_JSON, Kind.BAD_IDS, Kind.UNKNOWN_FIELD])
def test_a_poison_message_missing_from_the_dead_letters_is_caught(kind: Kind) -> None:
    evidence = good_evidence()
    ids = evidence.message_ids[first(evidence, kind).key]
    kept = [m for m in evidence.dead_letters if m.attributes["fluxfillOriginalMessageId"] not in ids]
    evidence = dataclasses.replace(evidence, dead_letters=kept)
    assert broken(evidence) == {"invalid job accounted for on the dead-letter path": 1}


def test_a_valid_looking_job_dead_lettered_is_caught() -> None:
    evidence = good_evidence()
    job = first(evidence, Kind.MISSING_OBJECT)
    stray = SimpleNamespace(attributes={}, message_id="new", data=job.data)  # moved by Pub/Sub's policy
    evidence = dataclasses.replace(evidence, dead_letters=[*evidence.dead_letters, stray])
    assert broken(evidence) == {"invalid job accounted for on the dead-letter path": 1}


def test_a_deleted_session_made_again_is_caught() -> None:
    evidence = good_evidence()
    job = first(evidence, Kind.DELETED)
    evidence.documents[job.session] = {"status": "failed", "error": {"code": "original_missing"}}
    assert broken(evidence) == {"a deleted session stays deleted": 1}


def test_a_deleted_sessions_job_run_is_caught() -> None:
    evidence = good_evidence()
    evidence.results[first(evidence, Kind.DELETED).session] = ["edited.png", "preview.jpg"]
    assert broken(evidence) == {"a deleted session stays deleted": 1, "no orphaned result objects": 1}


def test_an_orphaned_result_is_caught() -> None:
    evidence = good_evidence()
    evidence.results[first(evidence, Kind.CORRUPT_IMAGE).session] = ["edited.png"]
    assert broken(evidence) == {"no orphaned result objects": 1}


def test_the_plan_is_seeded_and_holds_every_kind() -> None:
    jobs = plan(40, seed=11)
    assert [j.data for j in jobs] == [j.data for j in plan(40, seed=11)]
    assert [j.data for j in jobs] != [j.data for j in plan(40, seed=12)]
    assert {j.kind for j in jobs} == set(Kind)
    assert len({j.key for j in jobs}) == len(jobs)


def test_a_duplicate_is_published_twice_and_later() -> None:
    jobs = plan(40, seed=5)
    order = publish_order(jobs, seed=5)
    duplicate = next(j for j in jobs if j.kind is Kind.DUPLICATE)
    positions = [i for i, j in enumerate(order) if j is duplicate]
    assert len(positions) == 2
    assert len(order) == sum(j.copies for j in jobs)
    gaps = [
        b - a
        for job in jobs
        if job.kind is Kind.DUPLICATE
        for a, b in [[i for i, j in enumerate(order) if j is job]]
    ]
    assert 1 in gaps, "some duplicates are published back to back"


def test_faults_fall_inside_the_window_and_are_seeded() -> None:
    schedule = faults.schedule(["bridge-a", "bridge-b"], window_s=100.0, seed=1)
    assert schedule == faults.schedule(["bridge-a", "bridge-b"], window_s=100.0, seed=1)
    actions = sorted(
        (f.target if f.target in {"triton", *faults.EMULATORS} else "bridge", f.action) for f in schedule
    )
    assert actions == sorted(
        [("triton", "kill")] * 2
        + [("triton", "stub-kill")]
        + [("bridge", "kill")] * 2
        + [("triton", "stop"), ("bridge", "stop"), ("bridge", "kill-in-pause")]
        + [(emulator, "pause") for emulator in faults.EMULATORS]
    )
    assert all(10.0 <= f.at_s <= 85.0 for f in schedule)
    plan = faults.FaultPlan()
    hangs = {f.action: f.outage_s for f in schedule if f.action in {"stop", "pause"} and f.target != "triton"}
    assert hangs["stop"] == plan.bridge_stop_s > FleetConfig().lease_s, "a bridge must hang past its lease"
    (triton_stop,) = [f for f in schedule if f.target == "triton" and f.action == "stop"]
    assert triton_stop.outage_s > FleetConfig().job_deadline_s, "Triton must hang past the run deadline"


def test_latency_runs_from_first_publish_to_the_terminal_write() -> None:
    evidence = good_evidence()
    job = first(evidence, Kind.VALID)
    published = datetime(2026, 1, 1, tzinfo=UTC)
    evidence.documents[job.session]["finishedAt"] = published + timedelta(seconds=3)
    assert invariants.latencies(evidence, {job.key: published}) == [3.0]
    assert invariants.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0


def at(seconds: float) -> datetime:
    """A moment of the queueing tests' timelines, in seconds from their zero."""
    return datetime(2026, 12, 3, tzinfo=UTC) + timedelta(seconds=seconds)


def job(session: str) -> PlannedJob:
    return PlannedJob(session, Kind.VALID, "u", session, b"{}", 1, None, None)


def test_a_wait_counts_only_the_time_a_slot_was_free() -> None:
    """Two slots; the waiting job (published at 0, claimed at 10) had both slots busy from 2 to 6 and from 7
    on, one free 0-2 and 6-7: 3 s of its 10 s wait a slot was free."""
    from chaos.queueing import idle_slot_waits

    docs: dict[str, dict[str, Any]] = {
        "a": {"status": "done", "startedAt": at(-5), "finishedAt": at(20)},  # one slot busy throughout
        "b": {"status": "done", "startedAt": at(2), "finishedAt": at(6)},
        "c": {"status": "done", "startedAt": at(7), "finishedAt": at(9)},
        "d": {"status": "done", "startedAt": at(9), "finishedAt": at(15)},
        "waiting": {"status": "done", "startedAt": at(10), "finishedAt": at(12)},
        "failed": {"status": "failed"},
    }
    published = {"waiting": at(0), "failed": at(0)}
    assert idle_slot_waits([job("waiting"), job("failed")], published, docs, slots=2) == [3.0]
    assert idle_slot_waits([job("waiting")], published, docs, slots=1) == [0.0]
    assert idle_slot_waits([job("waiting")], published, docs, slots=3) == [10.0]


def test_a_wait_is_measured_in_the_runs_it_waited_behind() -> None:
    """The job published at 0 and claimed at 10 waited while runs of 25, 4, 2 and 6 s were under way (the
    nearest-rank median of four is the second: 4 s): 2.5 runs. One claimed as it was published waited 0;
    one that waited while nothing ran waited behind no run."""
    from chaos.queueing import waits_in_runs_behind

    docs: dict[str, dict[str, Any]] = {
        "a": {"status": "done", "startedAt": at(-5), "finishedAt": at(20)},
        "b": {"status": "done", "startedAt": at(2), "finishedAt": at(6)},
        "c": {"status": "done", "startedAt": at(7), "finishedAt": at(9)},
        "d": {"status": "done", "startedAt": at(9), "finishedAt": at(15)},
        "before": {"status": "done", "startedAt": at(-9), "finishedAt": at(-6)},
        "waiting": {"status": "done", "startedAt": at(10), "finishedAt": at(12)},
        "at_once": {"status": "done", "startedAt": at(16), "finishedAt": at(17)},
        "alone": {"status": "done", "startedAt": at(22), "finishedAt": at(23)},
        "failed": {"status": "failed"},
    }
    published = {"waiting": at(0), "at_once": at(16), "alone": at(21), "failed": at(0)}
    planned = [job("waiting"), job("at_once"), job("alone"), job("failed")]
    assert waits_in_runs_behind(planned, published, docs) == [2.5, 0.0, 0.0]


def test_the_quick_push_run_pushes_and_meets_the_push_paths_faults_within_its_window() -> None:
    options = ChaosOptions.quick_push()
    window_s = options.jobs / options.rate_per_s
    schedule = faults.schedule(["bridge-a", "bridge-b"], window_s, options.seed, options.fault_plan)
    assert options.delivery == "push"
    assert sorted((f.target == "triton", f.action) for f in schedule) == [
        (False, "kill"),
        (False, "kill-in-pause"),
        (True, "kill"),
    ]
    assert all(0 < f.at_s < window_s for f in schedule)


def test_the_bridges_logs_are_read_for_outcomes_and_the_causes_of_retries(tmp_path: Path) -> None:
    lines = [
        {"event": "job outcome", "outcome": "retry", "cause": "triton", "sessionId": "s1"},
        {"event": "job outcome", "outcome": "retry", "cause": "session_not_yet", "sessionId": "s2"},
        {"event": "job outcome", "outcome": "retry", "cause": "triton", "sessionId": "s1"},
        {"event": "job outcome", "outcome": "done", "cause": None, "sessionId": "s1"},
        {"event": "job claimed", "outcome": "retry", "cause": "storage", "sessionId": "s3"},
    ]
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    first.write_text("\n".join(json.dumps(line) for line in lines[:3]) + "\n")
    # The last line of a SIGKILLed bridge may be cut short.
    second.write_text("\n".join(json.dumps(line) for line in lines[3:]) + '\n{"event": "job outcome", "outc')
    assert invariants.retry_causes([first, second]) == Counter({"triton": 2, "session_not_yet": 1})
    assert invariants.logged_outcomes([first, second], "done") == Counter({"s1": 1})
