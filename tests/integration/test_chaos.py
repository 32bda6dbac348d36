"""The quick chaos run and a short soak, against the emulators, a real tritonserver and bridge processes."""

from pathlib import Path

import pytest

from chaos import faults
from chaos.chaos_run import ChaosOptions, run_chaos
from chaos.report import chaos_text, saturation_text, soak_text
from chaos.saturation import TRITON_QUEUE_BOUND, SaturationOptions, run_saturation
from chaos.soak import SoakOptions, run_soak

# Minutes each: scheduled first (tests/conftest.py), so a second worker runs the rest meanwhile.
pytestmark = [pytest.mark.integration, pytest.mark.long]


# About 90 s here (100-140 s with the streaming pull, whose killed bridges' dead streams the emulator kept
# feeding). The settle wait allows 240 s: a loaded machine drains slower.
@pytest.mark.timeout(600)
def test_quick_chaos_loses_no_job_and_does_none_twice(tmp_path: Path) -> None:
    """~40 jobs with duplicates, poison and cancels, every bridge named `localhost`, one fault of each kind
    (Triton and a bridge SIGKILLed, the model's stub SIGKILLed alone, each SIGSTOPped past its deadline or
    lease, Storage paused, a bridge killed while Firestore held its final writes): every invariant holds."""
    options = ChaosOptions.quick()
    report = run_chaos(options, tmp_path)
    text = chaos_text(report)
    assert report.pushes is None, "pulled"
    assert not report.fault_errors, text
    assert (
        len(report.faults) == len(faults.schedule(["a", "b"], 10.0, options.seed, options.fault_plan)) == 7
    ), text
    assert all(check.checked > 0 for check in report.checks), text
    assert [c.name for c in report.checks if not c.ok] == [], text
    assert not report.notes, text
    # No ids, or a session the app deleted: no session to end.
    sessions = sum(
        count for kind, count in report.mix.items() if kind not in {"malformed_json", "bad_ids", "deleted"}
    )
    assert len(report.latencies_s) == sessions, text
    assert report.left_on_subscription == 0, "every message was settled (a deleted session's acked)"
    # Each cancelled job ended (its invariant above says how); each one that ended cancelled was timed.
    assert sum(report.cancels.values()) == report.mix["cancelled"] > 0, text
    assert len(report.cancel_latencies_s) == report.cancels.get("cancelled", 0), text
    assert report.dead_lettered_messages == sum(
        count for kind, count in report.mix.items() if kind in {"malformed_json", "unknown_field", "bad_ids"}
    ), text


# A loaded machine runs the burst and its drain slower (seen past 240 s with one core busy elsewhere).
@pytest.mark.timeout(480)
def test_quick_saturation_meets_triton_queue_bound_and_fails_nothing(tmp_path: Path) -> None:
    """A burst of 10x capacity on 12 job slots over a 9-request Triton queue: refusals resent, all done."""
    report = run_saturation(SaturationOptions(quick=True), tmp_path)
    text = saturation_text(report)
    assert report.max_in_flight == report.in_flight_limit == 6, text
    assert 0 < report.max_triton_pending <= TRITON_QUEUE_BOUND, text
    assert report.triton_refusals > 0, text
    assert report.age_rose, text
    assert report.statuses == {"done": report.burst_jobs}, text


# Its backlog drains slower on a busy machine: the soak waits while jobs keep finishing (chaos/soak.py).
@pytest.mark.timeout(480)
def test_short_soak_shows_no_clear_growth(tmp_path: Path) -> None:
    """A steady minute of valid jobs: every job done, and no clear memory or descriptor growth per job."""
    report = run_soak(SoakOptions(duration_s=45.0, rate_per_s=5.0, sample_every_s=1.0), tmp_path)
    text = soak_text(report)
    assert report.jobs_done == report.jobs_published, text
    assert {s.name for s in report.series} >= {
        "bridge-a",
        "bridge-b",
        "tritonserver",
        "stub flux_fill_stream",
    }, text
    assert report.ok, text
