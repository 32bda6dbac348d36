"""A job handler over fakes of its ports and an uploaded photo and mask; outcomes settled as in service."""

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from fluxfill.bridge.carry_over import CarryOver
from fluxfill.bridge.handler import JobHandler
from fluxfill.bridge.metrics import BridgeMetrics
from fluxfill.bridge.outcome import Delivery, Outcome
from fluxfill.bridge.parking import Parking
from fluxfill.bridge.readiness import Readiness
from fluxfill.bridge.runtime_config import CachedRuntimeConfig
from fluxfill.bridge.settings import BridgeSettings
from fluxfill.bridge.settle import should_ack
from tests.unit.bridge.fakes import (
    FakeDeadLetters,
    FakeModel,
    FakeObjectStore,
    FakeParkingLot,
    FakeSessionStore,
    png,
)

USER, SESSION = "user1", "session1"
PREFIX = f"users/{USER}/sessions/{SESSION}"
DOCUMENT = PREFIX


def settings(**overrides: Any) -> BridgeSettings:
    values: dict[str, Any] = {
        "project": "demo",
        "subscription": "jobs",
        "bucket": "bucket",
        "instance_id": "bridge-a",
        "progress_interval_s": 0.02,
        "max_delivery_attempts": 3,
        **overrides,
    }
    return BridgeSettings(**values)


def photo(height: int = 40, width: int = 60) -> np.ndarray:
    return np.random.default_rng(7).integers(0, 255, (height, width, 3), dtype=np.uint8)


def box_mask(height: int = 40, width: int = 60) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[10:20, 10:30] = 255
    return mask


class _Document:
    """Our RuntimeConfigSource port over a fixed document."""

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self.fields = fields

    def read(self) -> Mapping[str, Any]:
        return self.fields


def queued_session() -> dict[str, Any]:
    """The session document the app makes before it publishes the job."""
    return {"status": "queued", "updatedAt": datetime.now(UTC)}


class World:
    """A handler over fakes, with an uploaded photo and mask and the session document the app made."""

    def __init__(
        self, *, readiness: bool = False, config_document: Mapping[str, Any] | None = None, **overrides: Any
    ) -> None:
        """`readiness`: the handler watches Triton's readiness (checked once here), as a bridge does;
        `config_document`: the runtime config document its jobs are resolved under."""
        self.objects = FakeObjectStore(
            {f"{PREFIX}/original.png": png(photo()), f"{PREFIX}/mask.png": png(box_mask())}
        )
        self.sessions = FakeSessionStore({DOCUMENT: queued_session()})
        self.model = FakeModel()
        self.metrics = BridgeMetrics()
        self.settings = settings(**overrides)
        self.parking_lot = FakeParkingLot()
        self.readiness = Readiness(self.model, 600.0, self.metrics) if readiness else None
        if self.readiness is not None:
            self.readiness.check()
        self.runtime_config = (
            CachedRuntimeConfig(_Document(config_document), lifetime_s=600.0)
            if config_document is not None
            else None
        )
        self.handler = self._handler(self.settings)
        self.dead_letters = FakeDeadLetters()
        self.carry_over: CarryOver | None = None  # set by a test of what is carried over
        self.acked: list[bool] = []

    def another_bridge(self, **overrides: Any) -> JobHandler:
        """A second handler over the same bucket, sessions and model (another bridge, or another slot)."""
        return self._handler(settings(**overrides))

    def _handler(self, chosen: BridgeSettings) -> JobHandler:
        limit = chosen.max_jobs_in_flight_per_user
        parking = Parking(self.parking_lot, self.sessions, limit, self.metrics) if limit else None
        return JobHandler(
            chosen,
            self.objects,
            self.sessions,
            self.model,
            self.metrics,
            readiness=self.readiness,
            runtime_config=self.runtime_config,
            parking=parking,
        )

    def deliver(
        self,
        attempt: int | None = None,
        message_id: str = "m1",
        handler: JobHandler | None = None,
        attributes: dict[str, str] | None = None,
        published_s_ago: float = 0.0,
        **job: Any,
    ) -> Outcome:
        """Handle one delivery and settle it as the entry points do (dead letter, then the final write)."""
        data = json.dumps({"userId": USER, "sessionId": SESSION, **job}).encode()
        published = datetime.now(UTC) - timedelta(seconds=published_s_ago)
        delivery = Delivery(
            data, message_id, attributes or {}, publish_time=published, delivery_attempt=attempt
        )
        outcome = (handler or self.handler).handle(delivery)
        self.acked.append(should_ack(outcome, delivery, self.dead_letters, self.carry_over))
        return outcome

    def upload(self, user: str, session: str) -> None:
        """The same photo and mask, and a session document, for another session (another job of the app's)."""
        prefix = f"users/{user}/sessions/{session}"
        self.sessions.documents[prefix] = queued_session()
        self.objects.objects[f"{prefix}/original.png"] = png(photo())
        self.objects.objects[f"{prefix}/mask.png"] = png(box_mask())

    @property
    def document(self) -> dict[str, Any]:
        return self.sessions.documents[DOCUMENT]
