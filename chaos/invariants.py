"""The promises checked after a run, from Firestore, Storage, the dead-letter topic and the bridges' logs."""

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from chaos.workload import Kind, PlannedJob
from fluxfill.bridge.contract import (
    DEAD_LETTER_CODE_ATTRIBUTE,
    ORIGINAL_MESSAGE_ID_ATTRIBUTE,
    RESULT_EXTENSIONS,
)

PREVIEW = "preview.jpg"


@dataclass(frozen=True)
class Check:
    """One invariant: how many jobs it covers, how many break it, and examples of those."""

    name: str
    checked: int
    broken: int
    examples: str = ""

    @property
    def ok(self) -> bool:
        return self.broken == 0


@dataclass(frozen=True)
class Evidence:
    """Everything read back at the end of a run."""

    planned: Sequence[PlannedJob]
    documents: dict[str, dict[str, Any]]  # by session id
    results: dict[str, list[str]]  # result object names by session id
    dead_letters: Sequence[Any]  # pubsub messages
    done_logged: Counter[str]  # `done` outcomes per session id, over every bridge incarnation's log
    message_ids: dict[str, list[str]]  # by job key


def done_outcomes(logs: Iterable[Path]) -> Counter[str]:
    """How often each session was logged with outcome `done`, over all the given bridge logs."""
    return logged_outcomes(logs, "done")


def logged_outcomes(logs: Iterable[Path], outcome: str) -> Counter[str]:
    """How often each session was logged with `outcome`, over all the given bridge logs."""
    return Counter(
        str(event.get("sessionId")) for event in _outcome_events(logs) if event.get("outcome") == outcome
    )


def retry_causes(logs: Iterable[Path]) -> Counter[str]:
    """How many deliveries the bridges gave back, by the cause their "job outcome" lines name."""
    return Counter(
        str(event.get("cause")) for event in _outcome_events(logs) if event.get("outcome") == "retry"
    )


def _outcome_events(logs: Iterable[Path]) -> Iterator[dict[str, Any]]:
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if '"job outcome"' not in line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue  # the last line of a SIGKILLed process may be cut short


def _check(name: str, jobs: Sequence[PlannedJob], broken: list[str]) -> Check:
    return Check(name, len(jobs), len(broken), ", ".join(broken[:5]))


def check_all(evidence: Evidence) -> list[Check]:
    """Every invariant of the issue, in report order."""
    valid = [j for j in evidence.planned if j.expectation.status == "done"]
    invalid = [j for j in evidence.planned if j.expectation.status != "done"]
    return [
        _valid_done_once(evidence, valid),
        _one_result(evidence, valid),
        _invalid_failed_with_code(evidence, invalid),
        _invalid_dead_lettered(evidence, invalid),
        _none_left_unfinished(evidence),
        _no_orphans(evidence),
        _gone_stays_gone(evidence),
        _remade_runs_its_own_job(evidence),
        _cancelled_ends_once(evidence),
    ]


def _valid_done_once(evidence: Evidence, valid: Sequence[PlannedJob]) -> Check:
    broken = []
    for job in valid:
        document = evidence.documents.get(job.session, {})
        logged = evidence.done_logged.get(job.session, 0)
        # A SIGKILL between the terminal write and its log line may leave 0 logged; never 2.
        if document.get("status") != "done" or logged > 1:
            broken.append(f"{job.session}: status {document.get('status')}, done logged {logged}x")
    return _check("valid job done exactly once", valid, broken)


def _one_result(evidence: Evidence, valid: Sequence[PlannedJob]) -> Check:
    broken = []
    for job in valid:
        document = evidence.documents.get(job.session, {})
        names = sorted(evidence.results.get(job.session, []))
        paths = (document.get("result") or {}).get("paths", {})
        # The edited image's extension follows the original's format (the session's result says which).
        edited = f"edited.{RESULT_EXTENSIONS.get(str((document.get('result') or {}).get('format')), '?')}"
        if names != sorted([edited, PREVIEW]) or not paths.get("edited", "").endswith(f"/{edited}"):
            broken.append(f"{job.session}: objects {names}")
    return _check("one result object set per valid job", valid, broken)


def _invalid_failed_with_code(evidence: Evidence, invalid: Sequence[PlannedJob]) -> Check:
    broken = []
    for job in invalid:
        expected = job.expectation
        document = evidence.documents.get(job.session) if job.user else None
        if expected.status is None or job.kind is Kind.CANCELLED:
            continue  # no ids: its only record is the dead letter, checked below; a cancel: below
        found = (document or {}).get("status"), ((document or {}).get("error") or {}).get("code")
        if found != (expected.status, expected.code):
            broken.append(f"{job.session} ({job.kind}): {found}, expected {(expected.status, expected.code)}")
    return _check("invalid job failed with its specific code", invalid, broken)


def _invalid_dead_lettered(evidence: Evidence, invalid: Sequence[PlannedJob]) -> Check:
    # The bridge's dead letters name the original message id; ones Pub/Sub's own policy moved carry only
    # the data (each planned message's data is unique), and count as "(pubsub)".
    by_id: dict[str, set[str]] = {}
    by_data: dict[bytes, set[str]] = {}
    for message in evidence.dead_letters:
        original = message.attributes.get(ORIGINAL_MESSAGE_ID_ATTRIBUTE)
        code = message.attributes.get(DEAD_LETTER_CODE_ATTRIBUTE, "(pubsub)")
        if original is not None:
            by_id.setdefault(original, set()).add(code)
        else:
            by_data.setdefault(bytes(message.data), set()).add(code)
    broken = []
    for job in invalid:
        found: set[str] = set(by_data.get(job.data, set()))
        for message_id in evidence.message_ids.get(job.key, []):
            found |= by_id.get(message_id, set())
        expected = {str(job.expectation.code)} if job.expectation.dead_letter else set()
        if found != expected:
            broken.append(
                f"{job.session} ({job.kind}): dead letters {sorted(found)}, expected {sorted(expected)}"
            )
    return _check("invalid job accounted for on the dead-letter path", invalid, broken)


def _none_left_unfinished(evidence: Evidence) -> Check:
    broken = [
        f"{session}: {document.get('status')} (owner {document.get('owner')})"
        for session, document in evidence.documents.items()
        if document.get("status") not in {"done", "failed", "cancelled"}
    ]
    return Check(
        "no job left queued or processing", len(evidence.documents), len(broken), ", ".join(broken[:5])
    )


def _no_orphans(evidence: Evidence) -> Check:
    broken = [
        f"{session}: {names} with status {evidence.documents.get(session, {}).get('status')}"
        for session, names in evidence.results.items()
        if evidence.documents.get(session, {}).get("status") != "done"
    ]
    return Check("no orphaned result objects", len(evidence.results), len(broken), ", ".join(broken[:5]))


def _gone_stays_gone(evidence: Evidence) -> Check:
    gone = [j for j in evidence.planned if j.user and j.expectation.status is None]
    broken = [
        f"{job.session} ({job.kind}): {evidence.documents[job.session]}"
        if job.session in evidence.documents
        else f"{job.session} ({job.kind}): results {evidence.results[job.session]}"
        for job in gone
        if job.session in evidence.documents or job.session in evidence.results
    ]
    return _check("a deleted session stays deleted", gone, broken)


def _remade_runs_its_own_job(evidence: Evidence) -> Check:
    """A session made again under its id is done with its own job's seed, never the deleted session's."""
    remade = [j for j in evidence.planned if j.kind is Kind.REMADE]
    broken = []
    for job in remade:
        ran = (evidence.documents.get(job.session, {}).get("model") or {}).get("seed")
        own = json.loads(job.data)["seed"]
        if ran != own:
            broken.append(f"{job.session}: ran with seed {ran}, its own job's is {own}")
    return _check("a session made again runs its own job", remade, broken)


def _cancelled_ends_once(evidence: Evidence) -> Check:
    """A job its user cancelled ends `cancelled` (nothing of a result kept, never done), or `done` once with
    its result when the cancel came after it; never failed, never left running."""
    cancelled = [j for j in evidence.planned if j.kind is Kind.CANCELLED]
    broken = []
    for job in cancelled:
        document = evidence.documents.get(job.session, {})
        status, code = document.get("status"), (document.get("error") or {}).get("code")
        logged = evidence.done_logged.get(job.session, 0)
        names = sorted(evidence.results.get(job.session, []))
        edited = (document.get("result") or {}).get("paths", {}).get("edited", "")
        if status == "cancelled" and code == "cancelled" and logged == 0 and not names:
            continue
        if status == "done" and logged <= 1 and len(names) == 2 and edited.rsplit("/", 1)[-1] in names:
            continue
        broken.append(f"{job.session}: status {status} ({code}), done logged {logged}x, objects {names}")
    return _check("a cancelled job ends cancelled, or done once", cancelled, broken)


def cancel_latencies(evidence: Evidence, cancelled_at: dict[str, datetime]) -> list[float]:
    """Seconds from the app's cancel to the `cancelled` write, per job that ended cancelled."""
    seconds = []
    for job in evidence.planned:
        document = evidence.documents.get(job.session, {})
        finished, at = document.get("finishedAt"), cancelled_at.get(job.key)
        if document.get("status") == "cancelled" and isinstance(finished, datetime) and at is not None:
            seconds.append(max(0.0, (finished - at).total_seconds()))
    return sorted(seconds)


def latencies(evidence: Evidence, published_at: dict[str, datetime]) -> list[float]:
    """Seconds from the first publish to the terminal write, per job with a session document."""
    seconds = []
    for job in evidence.planned:
        finished = evidence.documents.get(job.session, {}).get("finishedAt")
        if job.user and isinstance(finished, datetime) and job.key in published_at:
            seconds.append((finished - published_at[job.key]).total_seconds())
    return sorted(seconds)


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile of sorted values (0 when there are none)."""
    if not values:
        return 0.0
    return values[min(len(values) - 1, max(0, round(share * len(values)) - 1))]
