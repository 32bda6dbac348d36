"""Mutants of the bridge's exactly-one-outcome decisions: each must fail the unit tests.

Every decision of the claim protocol (sessions, user slots, the handler's outcomes, the monitor's lease,
settling a delivery, carry-over, parking) is changed here one at a time, the way a slip would change it,
and `tests/unit` must fail on each. In the thirty-sixth session twelve of them passed the whole unit suite (an
invalid copy of an ended job's message overwrote its outcome; a dead letter whose session end was not written
was acked; the monitor's lease-loss bound, its progress writes, the final write refused for a lost claim, ...)
until the tests that pin them were written.

`python -m tests.mutants` (`make mutants`, about 30 minutes on 2 cores) applies each in the working tree,
runs the unit tests, puts the source back, and exits 1 when a mutant survives or no longer applies.
tests/unit/test_mutants.py keeps every mutant applicable to the source as it is (each text found once).
"""

import argparse
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str


MUTANTS = [
    # sessions: the claim, heartbeat, release and finish rules.
    Mutant("a terminal session is claimed", "bridge/sessions.py",
           "    if status in TERMINAL_STATUSES:\n        return Claim(ClaimKind.FINISHED",
           "    if False:\n        return Claim(ClaimKind.FINISHED"),
    Mutant("a cancelled session is claimed", "bridge/sessions.py",
           "CANCEL_REQUESTED) is True:\n        return Claim(ClaimKind.CANCEL_REQUESTED",
           "CANCEL_REQUESTED) is None:\n        return Claim(ClaimKind.CANCEL_REQUESTED"),
    Mutant("one attempt more than allowed", "bridge/sessions.py",
           "if attempts >= max_attempts:", "if attempts > max_attempts:"),
    Mutant("a claim spends no attempt", "bridge/sessions.py",
           "SessionField.ATTEMPT: attempts + 1,", "SessionField.ATTEMPT: attempts,"),
    Mutant("no room kept for the bridge's fields", "bridge/sessions.py",
           "if size > MAX_DOCUMENT_BYTES - BRIDGE_ROOM_BYTES:", "if size > MAX_DOCUMENT_BYTES:"),
    Mutant("the lease renewed late", "bridge/sessions.py",
           "lease_s * (1 - LEASE_RENEWED_AFTER_SHARE)", "lease_s * (1 - 2 * LEASE_RENEWED_AFTER_SHARE)"),
    Mutant("an unreadable lease not renewed", "bridge/sessions.py",
           "    if not isinstance(expires, datetime):\n        return True",
           "    if not isinstance(expires, datetime):\n        return False"),
    Mutant("a heartbeat misses the app's cancel", "bridge/sessions.py",
           "cancel = document.get(SessionField.CANCEL_REQUESTED) is True\n    if not held_by",
           "cancel = False\n    if not held_by"),
    Mutant("a release by a claim not current", "bridge/sessions.py",
           "    if not held_by(current, claim_id):\n        return None",
           "    if False:\n        return None"),
    Mutant("an ended session finished again", "bridge/sessions.py",
           "in TERMINAL_STATUSES:\n        return None\n    if claim_id is None and leased",
           "in ():\n        return None\n    if claim_id is None and leased"),
    Mutant("an unclaimed end written under a live lease", "bridge/sessions.py",
           "    if claim_id is None and leased(document, now):\n        return None",
           "    if False:\n        return None"),
    Mutant("done keeps an earlier attempt's error", "bridge/sessions.py",
           "        update[SessionField.ERROR] = None\n", "        pass\n"),
    # user slots
    Mutant("a lapsed slot counted", "bridge/user_slots.py",
           "if isinstance(expires, datetime) and expires > now", "if isinstance(expires, datetime)"),
    Mutant("one slot more than the limit", "bridge/user_slots.py",
           "if claim_id not in claims and len(claims) >= limit:",
           "if claim_id not in claims and len(claims) > limit:"),
    Mutant("a claim's own slot counted against it", "bridge/user_slots.py",
           "if claim_id not in claims and len(claims) >= limit:", "if len(claims) >= limit:"),
    Mutant("a slot never renewed", "bridge/user_slots.py",
           "    if expires is None or expires - now > timedelta(seconds=lease_s / 2):", "    if True:"),
    Mutant("a slot renewed at every heartbeat", "bridge/user_slots.py",
           "    if expires is None or expires - now > timedelta(seconds=lease_s / 2):",
           "    if expires is None:"),
    Mutant("a dropped slot kept", "bridge/user_slots.py", "    claims.pop(claim_id, None)\n", "\n"),
    Mutant("a job at its user's limit claimed all the same", "bridge/user_slots.py",
           "user_running=running), None, None", "user_running=running), update, None"),
    Mutant("a replaced claim's slot renewed", "bridge/user_slots.py",
           "renew(slots, claim_id, now, lease_s) if beat.still_owner else None",
           "renew(slots, claim_id, now, lease_s)"),
    Mutant("a limit of 0 limits", "bridge/user_slots.py",
           "if result.kind is not ClaimKind.CLAIMED or limit <= 0:",
           "if result.kind is not ClaimKind.CLAIMED:"),
    # the handler's outcomes
    Mutant("claimed while the model is not ready", "bridge/handler.py",
           "        if self._readiness is not None and not self._readiness.ready:", "        if False:"),
    Mutant("an earlier attempt's uploaded results run again", "bridge/handler.py",
           "        if uploaded is not None:\n", "        if False:\n"),
    Mutant("uploaded results looked for from the third attempt", "bridge/handler.py",
           "            if claimed.attempt > 1\n", "            if claimed.attempt > 2\n"),
    Mutant("a lost lease's run still writes", "bridge/handler.py",
           "        if monitor.lease_lost or isinstance(error, LeaseLostError):",
           "        if isinstance(error, LeaseLostError):"),
    Mutant("a superseded claim's slot kept", "bridge/handler.py",
           "            if monitor.superseded:\n                self._let_go(claimed)",
           "            if False:\n                self._let_go(claimed)"),
    Mutant("a shutdown taken for the app's cancel", "bridge/handler.py",
           "        if isinstance(error, JobCancelledError) and monitor.cancel_requested:",
           "        if isinstance(error, JobCancelledError):"),
    Mutant("one retry more than allowed", "bridge/handler.py",
           "        if claimed.attempt < self._settings.max_delivery_attempts:",
           "        if claimed.attempt <= self._settings.max_delivery_attempts:"),
    Mutant("an exhausted job left under its claim", "bridge/handler.py",
           "        self._sessions.release(claimed.ref, claimed.claim_id, reason, cause_of(error))\n"
           "        exhausted",
           "        exhausted"),
    Mutant("no claim check before the upload", "bridge/handler.py",
           "        if not monitor.confirm_claim():\n            raise LeaseLostError",
           "        if False:\n            raise LeaseLostError"),
    Mutant("a failure not recorded counted as ours", "bridge/handler.py",
           "unclaimed.error_fields(code, ending.reason)\n        ):\n            return _claim_taken_over()",
           "unclaimed.error_fields(code, ending.reason)\n        ):\n            pass"),
    Mutant("a result not recorded counted as done", "bridge/handler.py",
           "JobStatus.DONE, fields):\n            return _claim_taken_over()",
           "JobStatus.DONE, fields):\n            pass"),
    Mutant("Triton unavailable, claims go on", "bridge/handler.py",
           "            self._readiness.mark_unready(str(error))", "            pass"),
    Mutant("the at-limit hint outlives the user's job", "bridge/handler.py",
           "            self._at_limit.forget(job.userId)\n", "            pass\n"),
    Mutant("parked jobs not released when a job ends", "bridge/handler.py",
           "                self._parking.release_free(job.userId)", "                pass"),
    # the monitor
    Mutant("failed heartbeats never lose the lease", "bridge/monitor.py",
           "            if unrenewed_s < LEASE_LOSS_FRACTION * self._lease_s:", "            if True:"),
    Mutant("the bound counted from a read", "bridge/monitor.py",
           "        if beat.renewed:  # a heartbeat", "        if True:  # a heartbeat"),
    Mutant("progress written at every heartbeat", "bridge/monitor.py",
           "        if progress is not None:\n            self._written = progress",
           "        if False:\n            self._written = progress"),
    Mutant("the app's cancel not passed to the run", "bridge/monitor.py",
           "            self.cancel_requested = True\n            self._control.cancel.set()",
           "            self.cancel_requested = True"),
    Mutant("a replaced claim's run goes on", "bridge/monitor.py",
           "        if not beat.still_owner:\n            self.superseded = True",
           "        if False:\n            self.superseded = True"),
    Mutant("a lost lease does not stop the run", "bridge/monitor.py",
           "            self.lease_lost = True\n            self._control.cancel.set()",
           "            self.lease_lost = True"),
    # settling a delivery
    Mutant("a retry acked without being carried over", "bridge/settle.py",
           "carry_over and outcome.may_carry_over and carry_over.instead_of_giving_back",
           "carry_over and carry_over.instead_of_giving_back"),
    Mutant("a dead letter's session end never written", "bridge/settle.py",
           "    return _finalize(outcome)\n\n\ndef", "    return True\n\n\ndef"),
    Mutant("a dead letter not published, acked", "bridge/settle.py",
           "\"dead-lettering failed; nacking\", error=str(error))\n        return False",
           "\"dead-lettering failed; nacking\", error=str(error))\n        return True"),
    Mutant("no dead-letter topic, acked", "bridge/settle.py",
           "        _finalize(outcome)\n        return False",
           "        _finalize(outcome)\n        return True"),
    Mutant("a dead letter whose end was not written, acked", "bridge/settle.py",
           "end was not recorded; nacking\", error=str(error))\n        return False",
           "end was not recorded; nacking\", error=str(error))\n        return True"),
    Mutant("a dead letter whose end Firestore refuses, nacked for ever", "bridge/settle.py",
           "end cannot be recorded\", error=str(error))\n    return True",
           "end cannot be recorded\", error=str(error))\n        return False\n    return True"),
    Mutant("a dead letter without its original message id", "bridge/settle.py",
           "ORIGINAL_MESSAGE_ID_ATTRIBUTE: delivery.original_message_id}",
           "ORIGINAL_MESSAGE_ID_ATTRIBUTE: \"\"}"),
    # carry-over and the deliveries not run
    Mutant("carried over one delivery late", "bridge/carry_over.py",
           "attempt >= self._from_attempt", "attempt > self._from_attempt"),
    Mutant("carried over on the last delivery only", "bridge/carry_over.py",
           "LAST_DELIVERIES = 2", "LAST_DELIVERIES = 1"),
    Mutant("a carried-over copy without its original message id", "bridge/carry_over.py",
           "        ORIGINAL_MESSAGE_ID_ATTRIBUTE: delivery.original_message_id,\n        **republished",
           "        **republished"),
    Mutant("the running message's own copy dropped", "bridge/unclaimed.py",
           "    if claim.holder_message_id and claim.holder_message_id != delivery.original_message_id:",
           "    if True:"),
    Mutant("another running message's copy kept", "bridge/unclaimed.py",
           "    if claim.holder_message_id and claim.holder_message_id != delivery.original_message_id:",
           "    if False:"),
    Mutant("a late session document never waited for", "bridge/unclaimed.py",
           "    if grace_left_s > 0:", "    if False:"),
    Mutant("a late document looked for after its grace", "bridge/unclaimed.py",
           "        after_s = max(1, min(SESSION_RECHECK_S, math.ceil(grace_left_s)))",
           "        after_s = SESSION_RECHECK_S"),
    Mutant("a cancel before the start not recorded", "bridge/unclaimed.py",
           "    sessions.finish(ref, None, JobStatus.CANCELLED, "
           "error_fields(ErrorCode.CANCELLED, message))\n",
           "\n"),
    Mutant("a dead-lettered job's session never failed", "bridge/unclaimed.py",
           "    return Outcome(OutcomeKind.DEAD_LETTER, code, reason, finalize=finalize)",
           "    return Outcome(OutcomeKind.DEAD_LETTER, code, reason)"),
    Mutant("an invalid job's session not failed", "bridge/unclaimed.py",
           "    if error.ids is None:\n        return Outcome(",
           "    if True:\n        return Outcome("),
    # parking
    Mutant("a park looks at the slots no more", "bridge/parking.py",
           "        self.release_free(job.userId, slots_first=True)\n", "\n"),
    Mutant("more released than the user's free slots", "bridge/parking.py",
           "                if released >= free:\n                    return released",
           "                if False:\n                    return released"),
    Mutant("a release another bridge won counted as ours", "bridge/parking.py",
           "                if self._lot.release(candidate):",
           "                if self._lot.release(candidate) or True:"),
]  # fmt: skip


def applied(mutant: Mutant, source: str) -> str:
    """The source with the mutant in it; ValueError unless its text occurs exactly once."""
    if mutant.old == mutant.new:
        raise ValueError(f"{mutant.name}: it changes nothing")
    found = source.count(mutant.old)
    if found != 1:
        raise ValueError(f"{mutant.name}: its text occurs {found} times in {mutant.path}")
    return source.replace(mutant.old, mutant.new)


def _killed(mutant: Mutant, tests: list[str]) -> bool:
    path = REPO_ROOT / mutant.path
    source = path.read_text()
    try:
        path.write_text(applied(mutant, source))
        run = subprocess.run(
            [sys.executable, "-m", "pytest", *tests, "-q", "-x", "-n", "2", "-p", "no:cacheprovider"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        path.write_text(source)
    return run.returncode != 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutants", description=__doc__)
    parser.add_argument("tests", nargs="*", default=["tests/unit"], help="what to run against each mutant")
    args = parser.parse_args(argv)
    # A stop (`timeout`, a CI's cancel) ends the run through `finally`, which puts the source back.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    survivors = []
    for mutant in MUTANTS:
        killed = _killed(mutant, args.tests)
        print(f"{'killed  ' if killed else 'SURVIVED'} {mutant.path}: {mutant.name}", flush=True)
        if not killed:
            survivors.append(mutant.name)
    print(f"{len(MUTANTS) - len(survivors)} of {len(MUTANTS)} mutants killed")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
