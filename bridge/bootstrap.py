"""Wire the bridge once: settings in, a handler over real adapters out; the one place building clients."""

from dataclasses import dataclass, field
from typing import Any

from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from fluxfill.bridge.adapters.cancels_store import FirestoreQueuedCancels
from fluxfill.bridge.adapters.firestore import (
    FirestoreDeadLetterLedger,
    FirestoreRuntimeConfig,
    FirestoreSessions,
)
from fluxfill.bridge.adapters.parking_store import FirestoreParkingLot
from fluxfill.bridge.adapters.pubsub import (
    PubSubDeadLetters,
    PubSubRequeue,
    publisher_client,
    subscriber_client,
)
from fluxfill.bridge.adapters.storage import CloudStorageObjects
from fluxfill.bridge.adapters.triton import TritonInpaintModel
from fluxfill.bridge.adapters.user_slots_store import FirestoreUserSlots
from fluxfill.bridge.cancel_sweep import CancelSweep
from fluxfill.bridge.carry_over import CarryOver
from fluxfill.bridge.contract import BULK_LANE, URGENT_LANE
from fluxfill.bridge.credentials import google_credentials
from fluxfill.bridge.dead_letters import OncePerMessage
from fluxfill.bridge.handler import JobHandler
from fluxfill.bridge.metrics import BridgeMetrics
from fluxfill.bridge.oidc import PushTokenVerifier
from fluxfill.bridge.parking import Parking
from fluxfill.bridge.path_templates import session_collection
from fluxfill.bridge.ports import DeadLetterSink, InpaintModel
from fluxfill.bridge.readiness import Readiness
from fluxfill.bridge.runtime_config import CachedRuntimeConfig
from fluxfill.bridge.settings import BridgeSettings
from fluxfill.bridge.vital import VitalThreads


@dataclass
class Bridge:
    """Everything one bridge process runs on."""

    settings: BridgeSettings
    handler: JobHandler
    readiness: Readiness
    metrics: BridgeMetrics
    dead_letters: DeadLetterSink | None
    verifier: PushTokenVerifier | None
    subscriber: Any = field(default=None)  # a pubsub_v1.SubscriberClient in pull mode: acks and leases
    # A second client whose channel only pulls: closed on stop, ending a pull that waits for messages.
    pull_subscriber: Any = field(default=None)
    parking: Parking | None = None  # jobs over their user's limit (with that limit): swept now and then
    # Jobs given back on their subscription's last deliveries go out anew (with that maximum set).
    carry_over: CarryOver | None = None
    # Queued jobs their app cancelled, ended now and then (with cancel_sweep_s, and a session collection).
    cancel_sweep: CancelSweep | None = None
    vital: VitalThreads = field(default_factory=VitalThreads)  # its own threads; a death fails /healthz


def single_threaded_blas() -> None:
    """BLAS (numpy's OpenBLAS) on the calling thread only, for the rest of the process.

    The bridge's parallelism is its jobs' threads, and its one BLAS call (the splice's n x 64 by 64 x 64
    product) is small: OpenBLAS's own threads spun while they waited for a busy core, which cost a 1 MP job
    151-164 instead of 82-92 ms of the bridge's CPU, and ~20 ms of its wall time (2 cores beside the
    emulators, 2026-12-04; docs/benchmarks.md)."""
    threadpool_limits(limits=1, user_api="blas")


def build_bridge(settings: BridgeSettings, model: InpaintModel | None = None) -> Bridge:
    """Create the Google and Triton clients and the handler over them."""
    from google.cloud import firestore, storage  # type: ignore[attr-defined]

    single_threaded_blas()

    credentials = google_credentials(settings)
    db = firestore.Client(
        project=settings.project, credentials=credentials, database=settings.firestore_database
    )
    metrics = BridgeMetrics()
    model = model or TritonInpaintModel(settings.triton_url, settings.triton_protocol)
    readiness = Readiness(model, settings.readiness_interval_s, metrics)
    publisher = publisher_client(credentials) if settings.dead_letter_topic or settings.topic else None
    slots, parking = None, None
    if settings.max_jobs_in_flight_per_user:
        assert publisher is not None  # settings require the topic with the limit
        slots = FirestoreUserSlots(db, settings.user_slots_collection)
        lot = FirestoreParkingLot(db, settings.parked_jobs_collection, _requeue(settings, publisher))
        parking = Parking(lot, slots, settings.max_jobs_in_flight_per_user, metrics)
    handler = JobHandler(
        settings,
        CloudStorageObjects(
            storage.Client(project=settings.project, credentials=credentials), settings.bucket
        ),
        FirestoreSessions(db, user_slots=slots),
        model,
        metrics,
        readiness=readiness,
        runtime_config=CachedRuntimeConfig(
            FirestoreRuntimeConfig(db, settings.runtime_config_document), settings.runtime_config_cache_s
        )
        if settings.runtime_config_document
        else None,
        parking=parking,
    )
    dead_letters: DeadLetterSink | None = None
    if publisher is not None and settings.dead_letter_topic:
        dead_letters = PubSubDeadLetters(
            publisher, publisher.topic_path(settings.project, settings.dead_letter_topic)
        )
        if settings.dead_letter_ledger:
            dead_letters = OncePerMessage(
                dead_letters, FirestoreDeadLetterLedger(db, settings.dead_letter_ledger)
            )
    verifier = None
    if settings.mode == "push" and settings.push_auth:
        verifier = PushTokenVerifier(
            settings.push_audience, settings.push_service_account, settings.oidc_certs_url
        )
    subscriber, pull_subscriber = None, None
    if settings.mode == "pull":
        subscriber, pull_subscriber = subscriber_client(credentials), subscriber_client(credentials)
    carry_over = None
    if settings.subscription_max_delivery_attempts:
        assert publisher is not None  # settings require the topic with it
        carry_over = CarryOver(
            _requeue(settings, publisher), settings.subscription_max_delivery_attempts, metrics
        )
    collection = session_collection(settings.session_template)
    cancel_sweep = None
    if settings.cancel_sweep_s and collection is not None:
        cancel_sweep = CancelSweep(FirestoreQueuedCancels(db, collection), settings.session_template, metrics)
    return Bridge(
        settings,
        handler,
        readiness,
        metrics,
        dead_letters,
        verifier,
        subscriber,
        pull_subscriber,
        parking,
        carry_over,
        cancel_sweep,
    )


def _requeue(settings: BridgeSettings, publisher: Any) -> PubSubRequeue:
    """Where released jobs go: the topic of their lane."""
    topics = {BULK_LANE: publisher.topic_path(settings.project, settings.topic)}
    if settings.urgent_topic:
        topics[URGENT_LANE] = publisher.topic_path(settings.project, settings.urgent_topic)
    return PubSubRequeue(publisher, topics)
