"""Queued jobs their app cancelled, ended at once instead of when their message comes.

A bridge learns of a cancel from the job's session document: a running job at its next heartbeat, a queued
one only when a bridge takes its message, after every job ahead of it in Pub/Sub (in the chaos run's backlog,
up to a minute; on a busy fleet, as long as its queue). Meanwhile the app's user saw `queued` under their
cancel. Every `cancel_sweep_s` each bridge asks Firestore for session documents `queued` with
`cancelRequested` (a collection-group query on the session template's collection id) and ends each that no
bridge ever claimed `cancelled` (a compare-and-set: a claim that lands first wins, and its run ends it at
its first heartbeat). The job's message, when it comes, finds the job ended and is acked as a duplicate. A
session claimed before is left to its message (an earlier run may have uploaded its results: those are
recorded), and so is a session created without a status (no query finds a missing field).

The sweep never raises: a failed query or write is logged and counted, and the next sweep tries again.
"""

import structlog

from fluxfill.bridge.errors import BridgeError
from fluxfill.bridge.metrics import BridgeMetrics
from fluxfill.bridge.path_templates import names_session
from fluxfill.bridge.ports import QueuedCancels

logger = structlog.get_logger(__name__)
# Cancelled queued sessions ended per sweep at most; more wait for the next one.
SWEEP_LIMIT = 100


class CancelSweep:
    """Ends the cancelled, never-claimed sessions of `session_template` that `store` finds."""

    def __init__(self, store: QueuedCancels, session_template: str, metrics: BridgeMetrics) -> None:
        self._store = store
        self._template = session_template
        self._metrics = metrics
        self._failing = ""  # the last failure logged, so that a lasting one (no index) is logged once

    def sweep(self) -> int:
        """End what is found now; how many were ended. Never raises."""
        try:
            paths = self._store.cancelled_queued(SWEEP_LIMIT)
        except BridgeError as error:
            self._failed(str(error))
            return 0
        ended, failures = 0, 0
        for path in paths:
            if not names_session(self._template, path):
                continue  # a collection of the same id elsewhere in the app's database
            try:
                if self._store.end_cancelled(path):
                    ended += 1
                    logger.info("queued job cancelled by its app ended", session=path)
            except BridgeError as error:
                failures += 1
                self._failed(str(error))
        if ended:
            self._metrics.cancels_swept.labels("ended").inc(ended)
        if not failures:
            self._failing = ""
        return ended

    def _failed(self, error: str) -> None:
        self._metrics.cancels_swept.labels("failed").inc()
        if error != self._failing:
            logger.warning(
                "the cancel sweep failed; queued jobs' cancels wait for their messages", error=error
            )
        self._failing = error
