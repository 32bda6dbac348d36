"""The HTTP side: /healthz, /readyz and /metrics always; /push (Cloud Run) in push mode.

/push answers every request with a decision Pub/Sub understands, never a 500: 204 (done, dead-lettered, or
carried over), 400 (no push envelope), 401/403 (token), 413 (body over MAX_PUSH_BODY_BYTES, refused before
parsing), 429 (busy) or 503 (not ready, stopping, or retry later). Token checks and the job run off the event
loop, so /healthz answers while they block.

A push beyond `max_concurrent_jobs` waits for a slot (urgent jobs first, fluxfill.bridge.lanes) for up to
`push_slot_wait_s` before it is refused: Pub/Sub counts every refusal as a delivery attempt, and a message
refused as often as its subscription's dead-letter policy allows is dead-lettered by Pub/Sub, never claimed,
its session left `queued` (an 8-job burst at a one-slot bridge did that to 3 jobs on the emulator). A push
that finds the model not ready (Triton restarting, reloading its weights) waits for it within the same
`push_slot_wait_s`, for the same reason: answered 503 at once, Pub/Sub's retries (10 s doubling to 600 s, as
deployed) spent about 6 of a message's 10 attempts (as first deployed) in the minutes a reload takes. A bridge
that is stopping answers 503 at once (a push waiting then too). A push refused on one of the last deliveries
its subscription allows, a stopping bridge's included, is carried over to a new message instead
(fluxfill.bridge.carry_over), so that no wait, however long, has Pub/Sub dead-letter it.
"""

import base64
import binascii
import json
import threading
import time
from datetime import UTC, datetime

import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from fluxfill.bridge.bootstrap import Bridge
from fluxfill.bridge.lanes import SlotGate, lane_of
from fluxfill.bridge.oidc import CertificatesUnavailableError, PushAuthError
from fluxfill.bridge.outcome import Delivery
from fluxfill.bridge.settle import should_ack

logger = structlog.get_logger(__name__)
# Pub/Sub's largest message (10 MB) base64-encoded in its envelope, with room for attributes.
MAX_PUSH_BODY_BYTES = 14_500_000
# Pushes waiting for a slot at once, at most: each waits on a worker thread (the pool has 40), and a platform
# that sends more than a few beyond the slots is better told 429 early.
MAX_PUSHES_WAITING = 16
# A push not taken, by why: the answer Pub/Sub gets (each spends one of the message's delivery attempts).
REFUSALS = {"busy": (429, "busy"), "not_ready": (503, "not ready"), "stopping": (503, "stopping")}


class EnvelopeError(ValueError):
    """The push body is not a Pub/Sub push envelope."""


def delivery_from_envelope(body: bytes) -> Delivery:
    """The handler's Delivery from a push request body; raises EnvelopeError naming what is wrong."""
    try:
        envelope = json.loads(body)
        if isinstance(envelope, dict) and "message" not in envelope and "userId" in envelope:
            raise EnvelopeError(
                "not a Pub/Sub push envelope: the body is a job's data itself, as a push subscription that "
                "unwraps its payloads (--push-no-wrapper) sends it, without the message's id and attributes; "
                "turn payload unwrapping off on the subscription"
            )
        message = envelope["message"]
        data = base64.b64decode(message.get("data", ""), validate=True)
        message_id = str(message.get("messageId") or message["message_id"])
        publish_time = message.get("publishTime") or message.get("publish_time")
        attempt = envelope.get("deliveryAttempt")
        return Delivery(
            data=data,
            message_id=message_id,
            attributes={str(k): str(v) for k, v in (message.get("attributes") or {}).items()},
            publish_time=_utc(datetime.fromisoformat(publish_time)) if publish_time else None,
            delivery_attempt=int(attempt) if attempt is not None else None,
        )
    except EnvelopeError:
        raise
    # RecursionError: JSON nested too deep to parse; OverflowError: an infinite delivery attempt.
    except (
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        binascii.Error,
        RecursionError,
        OverflowError,
    ) as error:
        raise EnvelopeError(f"not a Pub/Sub push envelope: {type(error).__name__}: {error}") from None


def _utc(moment: datetime) -> datetime:
    # Pub/Sub sends UTC with a Z; a time without a zone is read as UTC rather than compared as naive.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class BodyTooLargeError(ValueError):
    """The push body is over MAX_PUSH_BODY_BYTES."""


async def bounded_body(request: Request, limit: int = MAX_PUSH_BODY_BYTES) -> bytes:
    """The request body, read no further than `limit` bytes; BodyTooLargeError beyond it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(f"the body is {declared} bytes, over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class HttpEntryPoint:
    """The routes over one bridge; push requests beyond max_concurrent_jobs wait for a slot, then 429."""

    def __init__(self, bridge: Bridge) -> None:
        self._bridge = bridge
        self._lock = threading.Lock()
        self._waiting = 0
        routes = [
            Route("/healthz", self.healthz),
            Route("/readyz", self.readyz),
            Route("/metrics", self.metrics),
        ]
        if bridge.settings.mode == "push":
            settings = bridge.settings
            self._gate = SlotGate(settings.max_concurrent_jobs, settings.bulk_share, bridge.metrics.waiting)
            routes.append(Route("/push", self.push, methods=["POST"]))
        self.app = Starlette(routes=routes)

    @property
    def pushes_waiting(self) -> int:
        """Pushes waiting now for the model or a slot."""
        with self._lock:
            return self._waiting

    async def healthz(self, _request: Request) -> Response:
        """The process is alive: 503 when a job's thread hangs (it ran past its deadline and margin), or one
        of the bridge's own threads died of a bug (fluxfill.bridge.vital), so that the platform's liveness
        probe restarts the bridge rather than leave its slot taken, or its pull stopped, for ever."""
        hung = self._bridge.handler.overdue_jobs()
        if hung:
            return PlainTextResponse(
                f"{len(hung)} job thread(s) hang past the deadline: {', '.join(hung)[:500]}", status_code=503
            )
        died = self._bridge.vital.deaths()
        if died:
            return PlainTextResponse(f"a thread of the bridge died: {'; '.join(died)[:500]}", status_code=503)
        return PlainTextResponse("ok")

    async def readyz(self, _request: Request) -> Response:
        """200 only while Triton reports the model READY and the bridge is not stopping."""
        if self._bridge.readiness.ready:
            return PlainTextResponse("ready")
        return PlainTextResponse("not ready", status_code=503)

    async def metrics(self, _request: Request) -> Response:
        """Prometheus exposition."""
        return Response(self._bridge.metrics.exposition(), media_type="text/plain; version=0.0.4")

    async def push(self, request: Request) -> Response:
        """One pushed message: 204 acks it, 503 or 429 makes Pub/Sub redeliver it; never a 500."""
        try:
            return await self._push(request)
        except Exception:  # a bug must not become a 500 that Pub/Sub cannot read: retry later
            logger.exception("unexpected error in the push handler")
            return PlainTextResponse("retry later", status_code=503)

    async def _push(self, request: Request) -> Response:
        # A stopping bridge reads the push too: its refusal ("stopping", from _take_slot) is carried over on
        # the message's last deliveries like any other's (answered 503 unread, Pub/Sub dead-lettered it).
        refusal = await run_in_threadpool(self._authenticate, request.headers.get("authorization"))
        if refusal is not None:
            return refusal
        try:
            body = await bounded_body(request)
        except BodyTooLargeError as error:
            logger.warning("push body refused", reason=str(error))
            return PlainTextResponse(str(error), status_code=413)
        try:
            delivery = delivery_from_envelope(body)
        except EnvelopeError as error:
            logger.warning("push body refused", reason=str(error))
            return PlainTextResponse(str(error), status_code=400)
        not_taken = await self._take_slot(delivery)
        if not_taken is not None:
            return await self._refused(delivery, not_taken)
        try:
            acked = await run_in_threadpool(self._handle, delivery)
        finally:
            self._gate.release()
        return Response(status_code=204) if acked else PlainTextResponse("retry", status_code=503)

    async def _take_slot(self, delivery: Delivery) -> str | None:
        """A ready model and a slot for this push (None), waited for up to push_slot_wait_s in all; else why
        not (a key of REFUSALS): the model still not ready, the bridge stopping meanwhile (another bridge
        takes the job), or busy."""
        with self._lock:
            crowded = self._waiting >= MAX_PUSHES_WAITING
            if not crowded:
                self._waiting += 1
        readiness = self._bridge.readiness
        if crowded:
            return "busy" if readiness.ready else "not_ready"
        deadline = time.monotonic() + self._bridge.settings.push_slot_wait_s
        try:
            ready = await run_in_threadpool(
                readiness.wait_until_ready, readiness.stopping, deadline - time.monotonic()
            )
            taken = ready and await run_in_threadpool(
                self._gate.acquire,
                lane_of(delivery.data),
                readiness.stopping,
                max(0.0, deadline - time.monotonic()),
            )
        finally:
            with self._lock:
                self._waiting -= 1
        if taken:
            return None
        if readiness.stopping.is_set():
            return "stopping"
        return "busy" if ready else "not_ready"

    async def _refused(self, delivery: Delivery, why: str) -> Response:
        """The refusal `why` names, which Pub/Sub counts as a delivery attempt; on the last attempts its
        subscription allows, the job is carried over to a new message instead (fluxfill.bridge.carry_over)."""
        carry_over = self._bridge.carry_over
        # `due` first, on the event loop: the carry-over's publish blocks, and few refusals are due one.
        if (
            carry_over is not None
            and carry_over.due(delivery)
            and await run_in_threadpool(carry_over.instead_of_giving_back, delivery, why)
        ):
            return Response(status_code=204)
        status, text = REFUSALS[why]
        return PlainTextResponse(text, status_code=status)

    def _handle(self, delivery: Delivery) -> bool:
        outcome = self._bridge.handler.handle(delivery)
        return should_ack(outcome, delivery, self._bridge.dead_letters, self._bridge.carry_over)

    def _authenticate(self, authorization: str | None) -> Response | None:
        verifier = self._bridge.verifier
        if verifier is None:
            return None
        try:
            verifier.verify(authorization)
        except PushAuthError as error:
            logger.warning("push refused", status=error.status, reason=str(error))
            return PlainTextResponse(str(error), status_code=error.status)
        except CertificatesUnavailableError as error:
            logger.error("cannot verify push tokens", reason=str(error))
            return PlainTextResponse("cannot verify tokens now", status_code=503)
        return None
