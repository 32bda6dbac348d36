"""Mutants of the bridge's exactly-one-outcome decisions and of what they stand on: each must fail its tests.

Every decision of the claim protocol (sessions, user slots, the handler's outcomes, the monitor's lease,
settling a delivery, carry-over, parking, the cancel sweep) and of the parts under it (the slot gate of the
priority lanes, Triton's admission line, readiness, results recognised or refused, the pulled messages and
their leases, the push entry point, Firestore's compare-and-set, user slots, parked jobs and dead-letter
ledger, what the bridge publishes to Pub/Sub, the Triton adapter) is changed here one at a time, the way a
slip would change it, and the mutant's tests (`tests/unit`, or the emulator's tests for pulls, leases, pushes
and the stores, tritonserver's for the adapter) must fail on each. In the thirty-sixth session twelve of the
protocol's passed the whole unit suite, in the thirty-seventh eighteen of the parts under it (a job refused
after it was let through lost its place, and an object that was no image at a result's path was recorded as
the result: both defects), in the thirty-eighth fifteen of the push entry point's, the stores' and the Pub/Sub
adapter's (a stopping bridge's refusal never carried over: a defect; two equivalent, left out), in the
thirty-ninth two of the Triton adapter's (one equivalent, left out), until the tests that pin them were
written.

`python -m tests.mutants` (`make mutants`, about two and a half hours on 2 cores; `--path FILE` for one
file's) applies each in the working tree, runs its tests, puts the source back, and exits 1 when a mutant
survives or no longer applies. tests/unit/test_mutants.py keeps every mutant applicable to the source as it is
(each text found once).
"""

import argparse
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


UNIT_TESTS = ("tests/unit",)
# It fails on every mutant (the mutated text is no longer found), so it would "kill" each one: never run.
SELF_CHECK = "tests/unit/test_mutants.py"
PYTEST_OPTIONS = ("-q", "-x", "-n", "2", "-p", "no:cacheprovider")
# Pulls and leases talk to Pub/Sub itself: their mutants run against the emulator's tests.
PULL_TESTS = ("tests/integration/bridge/test_pull.py",)
LEASE_TESTS = ("tests/integration/bridge/test_leases.py", "tests/integration/bridge/test_pull.py")
FAIRNESS_TESTS = ("tests/integration/bridge/test_fairness_and_priority.py",)
# The Firestore adapters' compare-and-set and the user slots, on the emulator.
STORE_TESTS = (
    "tests/integration/bridge/test_compare_and_set.py",
    "tests/integration/bridge/test_exactly_once.py",
    "tests/integration/bridge/test_fairness_and_priority.py",
)
PARKING_TESTS = (
    "tests/integration/bridge/test_parking.py",
    "tests/integration/bridge/test_fairness_and_priority.py",
)
LEDGER_TESTS = (
    "tests/integration/bridge/test_push.py",
    "tests/integration/bridge/test_unanswered_services.py",
)
PUBSUB_TESTS = (
    "tests/unit/bridge/test_pubsub_limits.py",
    "tests/integration/bridge/test_exactly_once.py",
    "tests/integration/bridge/test_parking.py",
    "tests/integration/bridge/test_unanswered_services.py",
)
CANCEL_SWEEP_TESTS = ("tests/integration/bridge/test_cancel_sweep.py",)
PUSH_TESTS = ("tests/unit/bridge/test_entry_points.py", "tests/integration/bridge/test_push.py")
# The Triton adapter, on tritonserver itself: its own module first (the quickest to fail).
TRITON_TESTS = (
    "tests/integration/bridge/test_triton_adapter.py",
    "tests/integration/bridge/test_triton_connections.py",
    "tests/integration/bridge/test_context.py",
    "tests/integration/bridge/test_run_control.py",
)


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...] = UNIT_TESTS  # what must fail on it


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
    Mutant("every claim a new result key", "bridge/sessions.py",
           "    result_key = result_key_of(document) or (", "    result_key = claim_id or ("),
    Mutant("a session first claimed before keys given one: its own results refused", "bridge/sessions.py",
           "(None if claimed_before(document) else claim_id)", "claim_id"),
    Mutant("a replayed session first claimed before keys given one: its own results refused",
           "bridge/sessions.py", " or whole_count(before_replay) > 0", ""),
    Mutant("a session made again under its id claimed by the deleted one's job", "bridge/sessions.py",
           "    if made is None or made_by is None or made <= made_by:\n        return None",
           "    if True:\n        return None"),
    Mutant("a session naming another job claimed by this one", "bridge/sessions.py",
           "    if job_id is not None and isinstance(named, str) and named != job_id:", "    if False:"),
    Mutant("results looked for while a live claim holds the job", "bridge/sessions.py",
           "    before = claimed_before(document) and not live\n",
           "    before = claimed_before(document)\n"),
    Mutant("a refused claim's results looked for without the session's key", "bridge/sessions.py",
           "    key = (result_key_of(document) or None) if before else None\n", "    key = None\n"),
    Mutant("a cancel or the spent attempts outrank results an earlier run uploaded", "bridge/handler.py",
           "recorded = self._earlier_results(job, ref, claim) if claim.claimed_before else None",
           "recorded = None"),
    Mutant("an object the job did not upload fails a cancelled job", "bridge/handler.py",
           '            logger.info("no earlier results to record", error=str(error))\n'
           "            return None\n",
           "            raise\n"),
    # the cancel sweep: queued jobs their app cancelled, ended before their messages come
    Mutant("a session given back after a claim ended by the sweep", "bridge/sessions.py",
           "    if _status(document) is not JobStatus.QUEUED or claimed_before(document):",
           "    if _status(document) is not JobStatus.QUEUED:"),
    Mutant("a session not queued ended by the sweep", "bridge/sessions.py",
           "    if _status(document) is not JobStatus.QUEUED or claimed_before(document):",
           "    if claimed_before(document):"),
    Mutant("another collection of the same id swept", "bridge/cancel_sweep.py",
           "            if not names_session(self._template, path):\n                continue",
           "            if False:\n                continue"),
    Mutant("a lasting sweep failure logged at every sweep", "bridge/cancel_sweep.py",
           "        if error != self._failing:", "        if True:"),
    Mutant("the sweep's query finds sessions not queued", "bridge/adapters/cancels_store.py",
           '            .where(filter=FieldFilter(SessionField.STATUS, "==", JobStatus.QUEUED.value))\n', "",
           CANCEL_SWEEP_TESTS),
    Mutant("a released job that ends without running keeps its slot from the next parked one",
           "bridge/handler.py",
           "        if self._parking is not None and settled and DEFERRALS_ATTRIBUTE in delivery.attributes:",
           "        if False:"),
    Mutant("a claim not told the job's id", "bridge/handler.py",
           "            job_id=job.jobId,\n", ""),
    Mutant("a session document written late taken for another's", "bridge/sessions.py",
           "timedelta(seconds=grace_s + CLOCKS_APART_S)", "timedelta(seconds=grace_s)"),
    Mutant("a claim not told when its job was published", "bridge/handler.py",
           "            made_by=sessions.latest_made(", "            made_by=None and sessions.latest_made("),
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
    Mutant("an earlier job parked over its session's later one", "bridge/parking.py",
           "    return job_first is None or parked_first is None or job_first >= parked_first",
           "    return True"),
    Mutant("a copy of a parked job not parked again", "bridge/parking.py",
           "or job_first >= parked_first", "or job_first > parked_first"),
    Mutant("a job not parked acked as parked", "bridge/handler.py",
           "        if not kept:\n", "        if False:\n"),
    Mutant("a release another bridge won counted as ours", "bridge/parking.py",
           "                if self._lot.release(candidate):",
           "                if self._lot.release(candidate) or True:"),
    # lanes
    Mutant("urgent never yields bulk's turn", "bridge/lanes.py",
           "            return not self._bulk_turn()", "            return True"),
    Mutant("bulk runs while urgent waits", "bridge/lanes.py",
           "        return self._waiting[URGENT_LANE] == 0 or self._bulk_turn()", "        return True"),
    Mutant("bulk's turn a grant late", "bridge/lanes.py",
           "self._urgent_in_a_row >= self._bulk_every - 1", "self._urgent_in_a_row >= self._bulk_every"),
    Mutant("a bulk grant does not restart the count", "bridge/lanes.py",
           "        if lane == BULK_LANE:\n            self._urgent_in_a_row = 0\n",
           "        if lane == BULK_LANE:\n            pass\n"),
    Mutant("urgent grants counted with no bulk waiting", "bridge/lanes.py",
           "        elif self._waiting[BULK_LANE] > 0:\n            self._urgent_in_a_row += 1",
           "        else:\n            self._urgent_in_a_row += 1"),
    Mutant("a slot granted past the last", "bridge/lanes.py",
           "        if self._free <= 0:", "        if self._free < 0:"),
    Mutant("a waiter never leaves the count", "bridge/lanes.py",
           "                self._waiting[lane] -= 1\n", "\n"),
    Mutant("a gate's timeout ignored", "bridge/lanes.py",
           "                    if left <= 0:\n                        return False\n"
           "                    self._changed.wait(timeout=left)\n                return False",
           "                    if False:\n                        return False\n"
           "                    self._changed.wait(timeout=max(left, 0.01))\n"
           "                return False"),
    Mutant("a message that is no job goes urgent", "bridge/lanes.py",
           "    except InvalidJobError:\n        return BULK_LANE",
           "    except InvalidJobError:\n        return URGENT_LANE"),
    Mutant("a released slot not freed", "bridge/lanes.py",
           "            self._free += 1\n", "            pass\n"),
    # admission
    Mutant("a new job jumps the line", "bridge/admission.py",
           "            if self._line:  # others", "            if False:  # others"),
    Mutant("a job refused after it was let through goes to the front", "bridge/admission.py",
           "                bisect.insort(self._line, ticket)",
           "                self._line.insert(0, ticket)"),
    Mutant("a job refused after it was let through goes to the end", "bridge/admission.py",
           "                bisect.insort(self._line, ticket)", "                self._line.append(ticket)"),
    Mutant("a refused job waits past its deadline", "bridge/admission.py",
           "                if time.monotonic() + wait >= control.deadline:\n"
           "                    raise refused",
           "                if False:\n                    raise refused"),
    Mutant("any Triton error sent again", "bridge/admission.py",
           "                    if not isinstance(error, TritonBusyError):\n                        raise",
           "                    if False:\n                        raise"),
    Mutant("the busy pause uncapped", "bridge/admission.py",
           "                pause = min(2 * pause, self._max_pause_s)", "                pause = 2 * pause"),
    Mutant("a cancel in line unnoticed", "bridge/admission.py",
           "                if control.cancel.is_set():\n"
           "                    raise JobCancelledError(\"cancelled while waiting",
           "                if False:\n"
           "                    raise JobCancelledError(\"cancelled while waiting"),
    Mutant("a deadline in line unnoticed", "bridge/admission.py",
           "                if time.monotonic() >= control.deadline:\n"
           "                    raise TritonBusyError(",
           "                if False:\n                    raise TritonBusyError("),
    Mutant("an urgent job in the bulk line", "bridge/admission.py",
           "        return self.urgent if request.urgent else self.bulk", "        return self.bulk"),
    Mutant("the next in line never let go", "bridge/admission.py",
           "                if in_line:\n                    admitted.start()",
           "                if False:\n                    admitted.start()"),
    Mutant("a refusal not counted", "bridge/admission.py",
           "                    metrics.triton_errors.labels(type(error).__name__).inc()\n", "\n"),
    Mutant("a job that leaves keeps its place", "bridge/admission.py",
           "            if ticket in self._line:\n                self._line.remove(ticket)",
           "            if False:\n                self._line.remove(ticket)"),
    Mutant("a cancel while paused unnoticed", "bridge/admission.py",
           "                if control.cancel.wait(wait):",
           "                if control.cancel.wait(wait) and False:"),
    # readiness
    Mutant("a stopping bridge still ready", "bridge/readiness.py",
           "        return self._ready.is_set() and not self.stopping.is_set()",
           "        return self._ready.is_set()"),
    Mutant("an unready blip since the mark missed", "bridge/readiness.py",
           "            if self._times_seen_unready != mark or not self._ready.is_set():",
           "            if not self._ready.is_set():"),
    Mutant("unready answers not counted", "bridge/readiness.py",
           "                self._times_seen_unready += 1\n", "\n"),
    Mutant("the ready gauge always 1", "bridge/readiness.py",
           "            self._metrics.ready.set(1 if ready else 0)",
           "            self._metrics.ready.set(1)"),
    Mutant("a readiness wait's timeout ignored", "bridge/readiness.py",
           "                    if left <= 0:\n                        return False\n"
           "                self._changed.wait",
           "                    if False:\n                        return False\n"
           "                self._changed.wait"),
    Mutant("the unready reminder every poll", "bridge/readiness.py",
           "now - self._reminded_at < UNREADY_REMINDER_S:", "False:"),
    Mutant("a failed call does not make the bridge unready", "bridge/readiness.py",
           "        self._set(False, reason)\n", "        pass\n"),
    Mutant("the first answer's reason unsaid", "bridge/readiness.py",
           "            if ready != self._ready.is_set() or not self._known:",
           "            if ready != self._ready.is_set():"),
    Mutant("the reminder repeated at once", "bridge/readiness.py",
           "            self._reminded_at = now\n            logger.warning(", "            logger.warning("),
    # results
    Mutant("a recovered result's seed the default", "bridge/results.py",
           "    seed = job.seed if job.seed is not None else default_seed(job)",
           "    seed = default_seed(job)"),
    Mutant("a recovered result not marked recovered", "bridge/results.py",
           "\"recovered\": True}", "\"recovered\": False}"),
    Mutant("a recovered result's path left a template", "bridge/results.py",
           "    paths[\"edited\"] = edited.path\n", "\n"),
    Mutant("results written without the claim's confirmation", "bridge/results.py",
           "        confirmed.result()\n", "\n"),
    Mutant("the png setting ignored", "bridge/results.py",
           "        always_png = settings.result_format == \"png\"", "        always_png = False"),
    Mutant("a recovered result's missing preview not made", "bridge/results.py",
           "    if preview_found is not None:\n        _check_ours(preview_found, result_key)\n    else:\n",
           "    if True:\n        pass\n    else:\n"),
    Mutant("an undecodable result told by its decoding error, not as a taken path", "bridge/results.py",
           "        raise _taken(found.path, error) from None", "        raise"),
    Mutant("a result another session of the same id left taken for this one's", "bridge/results.py",
           "    if found.result_key != result_key:", "    if False:"),
    Mutant("results uploaded without the session's key", "bridge/results.py",
           "encoded.content_type, result_key)}", "encoded.content_type)}"),
    Mutant("two edited images told as the original's", "bridge/results.py",
           "            ErrorCode.RESULT_PATH_TAKEN,\n            f\"{error}: which",
           "            ErrorCode.ORIGINAL_AMBIGUOUS,\n            f\"{error}: which"),
    Mutant("a recovered result's size the stored grid's", "bridge/results.py",
           "    height, width = kept.pixels.shape[:2]", "    width, height = kept.pixels.shape[:2]"),
    Mutant("an ambiguous mask told as the original", "bridge/uploads.py",
           "ErrorCode.ORIGINAL_AMBIGUOUS if what == \"original\" else ErrorCode.MASK_AMBIGUOUS",
           "ErrorCode.ORIGINAL_AMBIGUOUS"),
    Mutant("an object found at a result's path kept unchecked", "bridge/results.py",
           "            _check_kept(objects, path, settings.max_image_pixels, result_key)",
           "            pass"),
    Mutant("objects in a folder listed beside the photo", "bridge/adapters/storage.py",
           "prefix=pattern[:-1], delimiter=\"/\",", "prefix=pattern[:-1],", tests=PULL_TESTS),
    # pull (the emulator's Pub/Sub: the integration tests)
    Mutant("a bug's message acked", "bridge/pull.py",
           "            acked, retry_after_s = False, 0",
           "            acked, retry_after_s = True, 0", tests=PULL_TESTS),
    Mutant("a pulled job's slot never given back", "bridge/pull.py",
           "                self._gate.release()\n", "                pass\n", tests=PULL_TESTS),
    Mutant("one lane given a message beyond its slots", "bridge/pull.py",
           "(1 if len(self._lanes) > 1 else 0)", "1", tests=FAIRNESS_TESTS),
    Mutant("a job at its user's limit waiting at the slot gate", "bridge/pull.py",
           "        outcome = self._bridge.handler.defer_if_user_at_limit(delivery)\n",
           "        outcome = None\n", tests=FAIRNESS_TESTS),
    Mutant("a message whose job thread cannot start kept held", "bridge/pull.py",
           "a job thread; nacking\")\n                self._leases.nack(held)",
           "a job thread; nacking\")", tests=PULL_TESTS),
    Mutant("a held job given back on its last delivery at the stop", "bridge/pull.py",
           "carry_over.instead_of_giving_back(delivery, \"stopping\")", "False", tests=PULL_TESTS),
    # push (the HTTP entry point Cloud Run delivers to: the emulator's push subscriptions)
    Mutant("a push whose token is refused run", "bridge/http_app.py",
           "        if refusal is not None:\n            return refusal\n", "", tests=PUSH_TESTS),
    Mutant("certificates unavailable taken as a valid token", "bridge/http_app.py",
           "            return PlainTextResponse(\"cannot verify tokens now\", status_code=503)",
           "            return None", tests=PUSH_TESTS),
    Mutant("a declared body over the limit read", "bridge/http_app.py",
           "    if declared.isdigit() and int(declared) > limit:", "    if False:", tests=PUSH_TESTS),
    Mutant("a streamed body over the limit read", "bridge/http_app.py",
           "        if size > limit:\n", "        if False:\n", tests=PUSH_TESTS),
    Mutant("base64 data not validated", "bridge/http_app.py",
           "base64.b64decode(message.get(\"data\", \"\"), validate=True)",
           "base64.b64decode(message.get(\"data\", \"\"), validate=False)", tests=PUSH_TESTS),
    Mutant("an unwrapped payload taken for an envelope's", "bridge/http_app.py",
           "and \"message\" not in envelope and \"userId\" in envelope:", "and False:", tests=PUSH_TESTS),
    Mutant("a publish time without a zone left naive", "bridge/http_app.py",
           "    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)",
           "    return moment", tests=PUSH_TESTS),
    Mutant("pushes waiting never counted down", "bridge/http_app.py",
           "            with self._lock:\n                self._waiting -= 1\n", "            pass\n",
           tests=PUSH_TESTS),
    Mutant("one push more let wait", "bridge/http_app.py",
           "            crowded = self._waiting >= MAX_PUSHES_WAITING",
           "            crowded = self._waiting > MAX_PUSHES_WAITING", tests=PUSH_TESTS),
    Mutant("a crowded push told busy while the model is away", "bridge/http_app.py",
           "            return \"busy\" if readiness.ready else \"not_ready\"", "            return \"busy\"",
           tests=PUSH_TESTS),
    Mutant("a push's slot kept", "bridge/http_app.py",
           "        finally:\n            self._gate.release()\n", "        finally:\n            pass\n",
           tests=PUSH_TESTS),
    Mutant("a refused push not carried over", "bridge/http_app.py",
           "            and carry_over.due(delivery)\n", "            and False\n", tests=PUSH_TESTS),
    Mutant("a push given back answered 204", "bridge/http_app.py",
           "Response(status_code=204) if acked else", "Response(status_code=204) if True else",
           tests=PUSH_TESTS),
    Mutant("a refusal while stopping told busy", "bridge/http_app.py",
           "        if readiness.stopping.is_set():\n            return \"stopping\"\n", "",
           tests=PUSH_TESTS),
    Mutant("a bug in the push answered 500", "bridge/http_app.py",
           "            return PlainTextResponse(\"retry later\", status_code=503)",
           "            return PlainTextResponse(\"retry later\", status_code=500)", tests=PUSH_TESTS),
    # compare-and-set on Firestore (the adapters: the emulator's tests)
    Mutant("a write without its read's precondition", "bridge/adapters/compare_and_set.py",
           "reference.update(written, option=option, **bounded", "reference.update(written, **bounded",
           tests=STORE_TESTS),
    Mutant("a missing document set, not created", "bridge/adapters/compare_and_set.py",
           "result = reference.create(written,", "result = reference.set(written,", tests=STORE_TESTS),
    Mutant("an answer without a write given from memory", "bridge/adapters/compare_and_set.py",
           "                if not read:  # nothing written", "                if False:  # nothing written",
           tests=STORE_TESTS),
    Mutant("a refusal by create time given from memory", "bridge/adapters/compare_and_set.py",
           "                if not read:  # the document may have been made again",
           "                if False:  # the document may have been made again", tests=STORE_TESTS),
    Mutant("a document's create time read as its update time", "bridge/adapters/compare_and_set.py",
           "Known(snapshot.to_dict(), snapshot.update_time, snapshot.create_time)",
           "Known(snapshot.to_dict(), snapshot.update_time, snapshot.update_time)", tests=STORE_TESTS),
    Mutant("a replay requeues a session made again under another job", "client/jobs.py",
           "            if job_id is not None and isinstance(named, str) and named != job_id:",
           "            if False:", tests=("tests/integration/client/test_jobs.py",)),
    Mutant("the Firestore claim not told the job's id", "bridge/adapters/firestore.py",
           "                    job_id=job_id,\n", "", tests=STORE_TESTS),
    Mutant("the Firestore claim blind to the document's create time", "bridge/adapters/firestore.py",
           "                refuse=lambda made: sessions.remade(made, made_by),", "", tests=STORE_TESTS),
    Mutant("a lost round retried from the same known document", "bridge/adapters/compare_and_set.py",
           "                known = None  # another writer came first: read again",
           "                pass", tests=STORE_TESTS),
    Mutant("a refused claim's user slot kept", "bridge/adapters/firestore.py",
           "            if slots is not None and not claimed:\n", "            if False:\n",
           tests=STORE_TESTS),
    Mutant("a finished job's user slot kept", "bridge/adapters/firestore.py",
           "            self._free_slot(job, claim_id)\n\n    def _free", "\n    def _free",
           tests=STORE_TESTS),
    # parked jobs in Firestore (the adapter: the emulator's tests)
    Mutant("a parked job released without its version's precondition", "bridge/adapters/parking_store.py",
           "                    option=self._client.write_option(last_update_time=job.version),\n", "",
           tests=PARKING_TESTS),
    Mutant("a job parked again deleted with its release", "bridge/adapters/parking_store.py",
           "option=self._client.write_option(last_update_time=marked.update_time), **bounded()",
           "**bounded()", tests=PARKING_TESTS),
    Mutant("a parked job under another's release taken again", "bridge/adapters/parking_store.py",
           "            if isinstance(marked, datetime) and marked > stale:", "            if False:",
           tests=PARKING_TESTS),
    Mutant("an earlier job parked over its session's later one in Firestore",
           "bridge/adapters/parking_store.py",
           "            if isinstance(parked_first, datetime) and not supersedes(first, parked_first):",
           "            if False:", tests=PARKING_TESTS),
    Mutant("a parked job's release mark kept by a park", "bridge/adapters/parking_store.py",
           "            _RELEASING: None,\n", "", tests=PARKING_TESTS),
    Mutant("a release that died half-way never released again", "bridge/adapters/parking_store.py",
           "            if isinstance(marked, datetime) and marked > stale:",
           "            if isinstance(marked, datetime):", tests=PARKING_TESTS),
    Mutant("a failed publish leaves the parked job marked", "bridge/adapters/parking_store.py",
           "            self._unmark(reference, marked.update_time)\n", "", tests=PARKING_TESTS),
    Mutant("a user's parked jobs in the order they were parked", "bridge/adapters/parking_store.py",
           "order_by(\"firstPublished\")", "order_by(\"parkedAt\")", tests=PARKING_TESTS),
    Mutant("a parked job's first publish forgotten", "bridge/adapters/parking_store.py",
           "        first = job.first_published or now\n", "        first = now\n",
           tests=PARKING_TESTS),
    Mutant("no parked documents read beyond those asked for", "bridge/adapters/parking_store.py",
           "SCAN_EXTRA = 8", "SCAN_EXTRA = 0", tests=PARKING_TESTS),
    # the dead-letter ledger in Firestore: one dead letter per message
    Mutant("a dead letter never recorded", "bridge/adapters/firestore.py",
           "            self._collection.document(message_id).set(entry, **bounded())", "            pass",
           tests=LEDGER_TESTS),
    Mutant("a recorded dead letter never found", "bridge/adapters/firestore.py",
           "            return bool(self._collection.document(message_id).get(**bounded()).exists)",
           "            return False", tests=LEDGER_TESTS),
    # what the bridge publishes itself: dead letters and jobs published again, within Pub/Sub's limits
    Mutant("a payload over Pub/Sub's limit dead-lettered whole", "bridge/adapters/pubsub.py",
           "    if len(data) > MAX_DATA_BYTES:", "    if False:", tests=PUBSUB_TESTS),
    Mutant("a dead letter's reason not cut to a value's limit", "bridge/adapters/pubsub.py",
           "_utf8_prefix(reason, MAX_VALUE_BYTES)", "reason", tests=PUBSUB_TESTS),
    Mutant("an attribute value not cut to the limit", "bridge/adapters/pubsub.py",
           "        kept[key] = _utf8_prefix(value, MAX_VALUE_BYTES)", "        kept[key] = value",
           tests=PUBSUB_TESTS),
    Mutant("attributes beyond Pub/Sub's count kept", "bridge/adapters/pubsub.py",
           "        if len(kept) >= MAX_ATTRIBUTES - len(ours) - 1:",
           "        if len(kept) >= MAX_ATTRIBUTES:", tests=PUBSUB_TESTS),
    Mutant("Pub/Sub's reserved attributes kept", "bridge/adapters/pubsub.py",
           " or key.startswith(\"goog\")", "", tests=PUBSUB_TESTS),
    Mutant("a key over Pub/Sub's limit kept", "bridge/adapters/pubsub.py",
           "not 0 < len(key.encode()) <= MAX_KEY_BYTES", "not 0 < len(key.encode())", tests=PUBSUB_TESTS),
    Mutant("a job published again, the bridge's attributes not kept", "bridge/adapters/pubsub.py",
           "        ours = {key: attributes[key] for key in KEPT_ATTRIBUTES if key in attributes}",
           "        ours: dict[str, str] = {}", tests=PUBSUB_TESTS),
    Mutant("an urgent job without an urgent topic not published", "bridge/adapters/pubsub.py",
           "        topic = self.topic_paths.get(lane) or self.topic_paths[BULK_LANE]",
           "        topic = self.topic_paths[lane]", tests=PUBSUB_TESTS),
    Mutant("a dead letter's failed publish escaping as a bug", "bridge/adapters/pubsub.py",
           "raise DeadLetterPublishError(f\"cannot publish to {self.topic_path}: {error}\") from None",
           "raise", tests=PUBSUB_TESTS),
    # leases
    Mutant("a pulled message not extended at once", "bridge/leases.py",
           "        self._extend(subscription, ack_ids)\n        return held",
           "        return held", tests=LEASE_TESTS),
    Mutant("a job's start leaves its lease as it was", "bridge/leases.py",
           "                self._held[message.ack_id] = replace(message, lease_ends=time.monotonic() +"
           " self._max_lease_s)",
           "                pass", tests=LEASE_TESTS),
    Mutant("room counted one too many", "bridge/leases.py",
           "                if room > 0:\n                    return room",
           "                if room >= 0:\n                    return room", tests=LEASE_TESTS),
    Mutant("a lease held past its maximum", "bridge/leases.py",
           "                    if message.lease_ends <= now:",
           "                    if False:", tests=LEASE_TESTS),
    Mutant("a nack's delay ignored", "bridge/leases.py",
           "        self._modify(message.subscription, [message.ack_id], after_s)",
           "        self._modify(message.subscription, [message.ack_id], 0)", tests=LEASE_TESTS),
    Mutant("an acked message still held", "bridge/leases.py",
           "    def ack(self, message: HeldMessage) -> None:\n        self._forget(message)\n",
           "    def ack(self, message: HeldMessage) -> None:\n", tests=LEASE_TESTS),
    # The Triton adapter: what it sends, how it stops a run, what a deadline means (tritonserver's tests).
    Mutant("an urgent job sent to Triton as bulk", "bridge/adapters/triton.py",
           "        priority = PRIORITY_URGENT if request.urgent else PRIORITY_BULK",
           "        priority = PRIORITY_BULK", tests=TRITON_TESTS),
    Mutant("a stream left going when its job stops", "bridge/adapters/triton.py",
           "client.stop_stream(cancel_requests=not finished)", "client.stop_stream(cancel_requests=False)",
           tests=TRITON_TESTS),
    Mutant("a run that never started blamed on the job", "bridge/adapters/triton.py",
           "        if not started:\n            return TritonUnavailableError(",
           "        if False:\n            return TritonUnavailableError(", tests=TRITON_TESTS),
    Mutant("a time limit sent beyond what the model takes", "bridge/adapters/triton.py",
           "        remaining = min(remaining, MAX_TIMEOUT_S)\n", "", tests=TRITON_TESTS),
    Mutant("a stream's first step not noted", "bridge/adapters/triton.py",
           "                started = True\n", "", tests=TRITON_TESTS),
    Mutant("a running job's deadline blamed on Triton", "bridge/adapters/triton.py",
           "        if self.is_ready(DEADLINE_PROBE_TIMEOUT_S):",
           "        if not self.is_ready(DEADLINE_PROBE_TIMEOUT_S):", tests=TRITON_TESTS),
    Mutant("a cancel not seen while Triton runs", "bridge/adapters/triton.py",
           "        if control.cancel.is_set():\n            raise JobCancelledError",
           "        if False:\n            raise JobCancelledError", tests=TRITON_TESTS),
    Mutant("the deadline not watched while Triton runs", "bridge/adapters/triton.py",
           "        if time.monotonic() > control.deadline:\n            raise past_deadline()",
           "        if False:\n            raise past_deadline()", tests=TRITON_TESTS),
    Mutant("a stream's progress not passed on", "bridge/adapters/triton.py",
           "                    on_progress(int(step[0]), int(total[0]))", "                    pass",
           tests=TRITON_TESTS),
    Mutant("readiness asked on the runs' connection", "bridge/adapters/triton.py",
           "            client = self._client(timeout_s=timeout_s, own_connection=True)",
           "            client = self._client(timeout_s=timeout_s)", tests=TRITON_TESTS),
    Mutant("the crop parameters kept after Triton was away", "bridge/adapters/triton.py",
           "        if not ready or self._seen_unready:", "        if not ready:", tests=TRITON_TESTS),
    Mutant("a failed read of the crop parameters never tried again", "bridge/adapters/triton.py",
           "time.monotonic() - self._geometry_tried_at >= GEOMETRY_RETRY_S:",
           "self._geometry_tried_at == -math.inf:", tests=TRITON_TESTS),
]  # fmt: skip


def applied(mutant: Mutant, source: str) -> str:
    """The source with the mutant in it; ValueError unless its text occurs exactly once."""
    if mutant.old == mutant.new:
        raise ValueError(f"{mutant.name}: it changes nothing")
    found = source.count(mutant.old)
    if found != 1:
        raise ValueError(f"{mutant.name}: its text occurs {found} times in {mutant.path}")
    return source.replace(mutant.old, mutant.new)


def _killed_by(mutant: Mutant, tests: Sequence[str]) -> str | None:
    """The first test that failed on the mutant (its run's last line when none is named), or None."""
    path = REPO_ROOT / mutant.path
    source = path.read_text()
    try:
        path.write_text(applied(mutant, source))
        run = subprocess.run(
            [sys.executable, "-m", "pytest", *tests, f"--ignore={SELF_CHECK}", *PYTEST_OPTIONS],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        path.write_text(source)
    if run.returncode == 0:
        return None
    lines = run.stdout.strip().splitlines() or [f"pytest exited {run.returncode}"]
    return next((line for line in lines if line.startswith(("FAILED", "ERROR"))), lines[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutants", description=__doc__)
    parser.add_argument("tests", nargs="*", help="what to run against every mutant (default: each one's own)")
    parser.add_argument(
        "--path", action="append", default=[], help="only the mutants of this file (repeatable)"
    )
    args = parser.parse_args(argv)
    chosen = [mutant for mutant in MUTANTS if not args.path or mutant.path in args.path]
    # A stop (`timeout`, a CI's cancel) ends the run through `finally`, which puts the source back.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    survivors = []
    for mutant in chosen:
        killed_by = _killed_by(mutant, args.tests or mutant.tests)
        verdict = f"killed   {mutant.path}: {mutant.name} ({killed_by})" if killed_by else "SURVIVED"
        print(verdict if killed_by else f"{verdict} {mutant.path}: {mutant.name}", flush=True)
        if not killed_by:
            survivors.append(mutant.name)
    print(f"{len(chosen) - len(survivors)} of {len(chosen)} mutants killed")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
