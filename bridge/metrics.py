"""Prometheus metrics of one bridge, in their own registry (served on /metrics)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200)


class BridgeMetrics:
    """Jobs by outcome, latencies, per-phase timings, queue age, in-flight and waiting jobs, parked jobs,
    queued jobs cancelled by the sweep, waits for late uploads, Triton errors, failed pulls, readiness."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Counter(
            "fluxfill_bridge_jobs",
            "Messages handled, by outcome, error code, whose fault a failure is (input or service) and why a "
            "delivery was given back (a retry's cause)",
            ["outcome", "code", "fault", "cause"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fluxfill_bridge_job_latency_seconds",
            "Publish time to outcome, for jobs that ended (done, failed, cancelled)",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.phase = Histogram(
            "fluxfill_bridge_phase_seconds",
            "Time per phase of a job (download, inference, upload)",
            ["phase"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_age = Histogram(
            "fluxfill_bridge_queue_age_seconds",
            "Publish time to the start of handling",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "fluxfill_bridge_jobs_in_flight", "Jobs being handled now", registry=self.registry
        )
        self.overdue = Gauge(
            "fluxfill_bridge_jobs_overdue",
            "Jobs running past their deadline and margin: threads taken for hung (/healthz fails)",
            registry=self.registry,
        )
        self.waiting = Gauge(
            "fluxfill_bridge_jobs_waiting",
            "Pulled jobs waiting for a slot, by lane (urgent ones are taken first)",
            ["lane"],
            registry=self.registry,
        )
        self.parking = Counter(
            "fluxfill_bridge_parked_jobs",
            "Jobs parked (their user at the per-user limit) and released again, by event",
            ["event"],
            registry=self.registry,
        )
        self.carried_over = Counter(
            "fluxfill_bridge_carried_over",
            "Jobs published anew instead of given back on their subscription's last deliveries, by why they "
            "were to be given back: retry, not_ready, busy, stopping",
            ["why"],
            registry=self.registry,
        )
        self.cancels_swept = Counter(
            "fluxfill_bridge_cancels_swept",
            "Queued jobs their app cancelled, ended `cancelled` by the sweep before their message came "
            "(fluxfill.bridge.cancel_sweep), and the sweeps that failed, by event: ended, failed",
            ["event"],
            registry=self.registry,
        )
        self.triton_errors = Counter(
            "fluxfill_bridge_triton_errors",
            "Failed Triton calls, by error",
            ["error"],
            registry=self.registry,
        )
        self.pull_errors = Counter(
            "fluxfill_bridge_pull_errors",
            "Pulls that failed (Pub/Sub unreachable, the subscription gone or not ours), by lane",
            ["lane"],
            registry=self.registry,
        )
        self.upload_waits = Counter(
            "fluxfill_bridge_upload_waits",
            "Jobs that waited for their original or mask (published before its upload ended), by what and "
            "how the wait ended: arrived, missing (the grace ran out) or stopped (a cancel, the shutdown)",
            ["what", "outcome"],
            registry=self.registry,
        )
        self.downloaded_bytes = Counter(
            "fluxfill_bridge_downloaded_bytes", "Bytes read from Cloud Storage", registry=self.registry
        )
        self.ready = Gauge(
            "fluxfill_bridge_ready", "1 when Triton reports the model READY", registry=self.registry
        )

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The sum of the samples of this name that carry these labels (0 when none); for tests and logs."""
        wanted = (labels or {}).items()
        return sum(
            sample.value
            for family in self.registry.collect()
            for sample in family.samples
            if sample.name == name and wanted <= sample.labels.items()
        )
