"""Every delivery given back says why, in its log line and in the jobs counter's `cause` label: Triton away,
an app's late document, a Firestore or Storage outage, a bug. Before, each was a bare `outcome="retry"`, and a
dashboard could not tell an outage from apps that publish before they write."""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from fluxfill.bridge.adapters.pubsub import DeadLetterPublishError, RequeuePublishError
from fluxfill.bridge.contract import RETRYING
from fluxfill.bridge.errors import (
    ConfiguredValueRefusedError,
    JobCancelledError,
    LeaseLostError,
    RetryableError,
    RetryCause,
    SessionTransientError,
    StorageTransientError,
    TritonAnswerError,
    TritonBusyError,
    TritonInterruptedError,
    TritonUnavailableError,
)
from fluxfill.bridge.outcome import Outcome, OutcomeKind, cause_of
from tests.unit.bridge.world import DOCUMENT, World


def _not_ready(world: World) -> None:
    world.model.ready = False
    assert world.readiness is not None
    world.readiness.check()


def _no_document(world: World) -> None:
    del world.sessions.documents[DOCUMENT]


def _claimed_by_this_message_elsewhere(world: World) -> None:
    world.sessions.documents[DOCUMENT] = {
        "status": "processing",
        "claimId": "another-bridges-claim",
        "leaseExpiresAt": datetime.now(UTC) + timedelta(minutes=5),
        "messageId": "m1",
        "attempt": 1,
    }


def _model_fails(error: Exception) -> Callable[[World], None]:
    def setup(world: World) -> None:
        world.model.fail_with = error

    return setup


def _storage_fails(world: World) -> None:
    world.objects.fail_with = StorageTransientError("cloud storage failed to list: 503")


def _record_fails(world: World) -> None:
    world.sessions.finish_fails_with = SessionTransientError("firestore unavailable")


@pytest.mark.parametrize(
    ("setup", "cause"),
    [
        (_not_ready, RetryCause.MODEL_NOT_READY),
        (_no_document, RetryCause.SESSION_NOT_YET),
        (_claimed_by_this_message_elsewhere, RetryCause.RUNNING_ELSEWHERE),
        (_model_fails(TritonUnavailableError("triton: connection refused")), RetryCause.TRITON),
        (_storage_fails, RetryCause.STORAGE),
        (_record_fails, RetryCause.FIRESTORE),
        (
            _model_fails(ConfiguredValueRefusedError("the runtime config's prompt")),
            RetryCause.CONFIGURED_VALUE,
        ),
        (_model_fails(LeaseLostError("taken over")), RetryCause.CLAIM_LOST),
        (_model_fails(JobCancelledError("the bridge is stopping")), RetryCause.STOPPING),
        (_model_fails(ZeroDivisionError("a bug")), RetryCause.INTERNAL_ERROR),
    ],
    ids=lambda value: value.value if isinstance(value, RetryCause) else "",
)
def test_a_retry_is_counted_and_logged_with_its_cause(
    setup: Callable[[World], None], cause: RetryCause, capsys: pytest.CaptureFixture[str]
) -> None:
    world = World(readiness=True, max_delivery_attempts=5)
    setup(world)
    outcome = world.deliver(attempt=1)
    assert (outcome.kind, outcome.cause) == (OutcomeKind.RETRY, cause), outcome.reason
    counted = world.metrics.sample("fluxfill_bridge_jobs_total", {"outcome": "retry", "cause": cause.value})
    assert counted == 1
    assert world.metrics.sample("fluxfill_bridge_jobs_total", {"outcome": "retry"}) == 1, "one cause each"
    [line] = [line for line in capsys.readouterr().out.splitlines() if "job outcome" in line]
    assert f"cause={cause.value}" in line


def test_the_other_outcomes_have_no_cause(capsys: pytest.CaptureFixture[str]) -> None:
    world = World()
    assert world.deliver().kind is OutcomeKind.DONE
    assert world.metrics.sample("fluxfill_bridge_jobs_total", {"outcome": "done", "cause": ""}) == 1
    [line] = [line for line in capsys.readouterr().out.splitlines() if "job outcome" in line]
    assert "outcome=done" in line
    assert "cause" not in line


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (TritonUnavailableError("down"), RetryCause.TRITON),
        (TritonInterruptedError("was down"), RetryCause.TRITON),
        (TritonBusyError("queue full"), RetryCause.TRITON),
        (TritonAnswerError("an image of another size"), RetryCause.TRITON),
        (StorageTransientError("503"), RetryCause.STORAGE),
        (SessionTransientError("contention"), RetryCause.FIRESTORE),
        (ConfiguredValueRefusedError("prompt"), RetryCause.CONFIGURED_VALUE),
        (RequeuePublishError("jobs topic away"), RetryCause.PUBSUB),
        (DeadLetterPublishError("dead-letter topic away"), RetryCause.PUBSUB),
        (LeaseLostError("lost"), RetryCause.CLAIM_LOST),
        (JobCancelledError("stopping"), RetryCause.STOPPING),
        (RetryableError("of no known kind"), RetryCause.INTERNAL_ERROR),
        (KeyError("a bug"), RetryCause.INTERNAL_ERROR),
    ],
)
def test_each_retryable_error_of_the_bridges_tree_has_its_cause(error: Exception, cause: RetryCause) -> None:
    assert cause_of(error) is cause


def test_a_retry_without_a_cause_cannot_be_made() -> None:
    with pytest.raises(ValueError, match="a retry, and only a retry, has a cause"):
        Outcome(OutcomeKind.RETRY, reason="why?")
    with pytest.raises(ValueError, match="a retry, and only a retry, has a cause"):
        Outcome(OutcomeKind.DONE, cause=RetryCause.TRITON)


@pytest.mark.parametrize(
    ("setup", "cause"),
    [
        (_model_fails(TritonUnavailableError("triton: connection refused")), RetryCause.TRITON),
        (_storage_fails, RetryCause.STORAGE),
        (_model_fails(JobCancelledError("the bridge is stopping")), RetryCause.STOPPING),
        (_model_fails(ZeroDivisionError("a bug")), RetryCause.INTERNAL_ERROR),
    ],
    ids=lambda value: value.value if isinstance(value, RetryCause) else "",
)
def test_a_job_given_back_tells_the_app_why_on_its_session(
    setup: Callable[[World], None], cause: RetryCause
) -> None:
    """Queued again after a claim, its `error` is `retrying` (no ErrorCode: the job has not failed) with the
    reason's sentence and, now, its cause."""
    world = World(max_delivery_attempts=5)
    setup(world)
    assert world.deliver(attempt=1).cause is cause
    assert world.document["status"] == "queued"
    error = world.document["error"]
    assert (error["code"], error["cause"]) == (RETRYING, cause.value)
    assert error["message"]
