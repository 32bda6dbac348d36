"""Bridge throughput: jobs per second through the emulators with a near-zero-cost model, by concurrency.

The results keep the original's format (the photo is a JPEG: its edited MCUs are spliced).

The real bridge (`build_bridge`, pull, Firestore claims and status writes, Cloud Storage reads
and writes) runs in this process against the Pub/Sub and Firestore emulators and fake-gcs-server (the
integration tests' own harness); only the model is replaced by one that paints the mask at once, so what
is measured is the bridge and its Google round trips. Jobs are uploaded and published before the bridge
starts; the clock runs from its start to the last job counted done, at 1, 4 and 16 concurrent jobs, and so
does this process's CPU time (the bridge's own: the emulators are other processes).
Per job, the bridge's own phase timings (written to each session's `timings`) are split further with the
intake functions timed on the same images in this run: download = fetch + decode, upload = encode + write;
"claim, status, ack" is the rest of the job's share of the wall time.

Run: `python -m bench.bridge_throughput [--quick]` (needs Java for the emulators, as the integration tests).
"""

import contextlib
import io
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore, pubsub_v1, storage  # type: ignore[attr-defined]
from PIL import Image

from bench.common import (
    children_cpu_s,
    interleaved,
    markdown_table,
    median_ms,
    parser,
    pyplot,
    report,
    save_plot,
    shipped_parameters,
)
from bench.photo import textured_photo
from fluxfill.bridge import intake
from fluxfill.bridge.context import CropGeometry
from fluxfill.bridge.contract import PREVIEW_MAX_SIDE
from fluxfill.bridge.logs import configure_logging
from fluxfill.bridge.ports import InferenceRequest, InferenceResult, ProgressCallback, RunControl
from fluxfill.bridge.result_image import encode_result
from fluxfill.client.local_emulators import running_emulators
from fluxfill.inpaint.config import parse_model_config
from fluxfill.inpaint.contract import MASK_THRESHOLD
from tests.integration.bridge.harness import PROJECT, JobSystem, running_bridge, wait_until

CONCURRENCY = (1, 4, 16)
QUICK_CONCURRENCY = (1, 4)
PHOTO_SIZE = (1024, 768)
GOAL_JOBS_PER_S = 20.0
SHIPPED_GEOMETRY = parse_model_config(shipped_parameters()).crop_geometry


class PaintingModel:
    """The InpaintModel port at near-zero cost: the mask painted grey at once, so the result is edited (a
    JPEG result then has MCUs to splice, as with the real model)."""

    name = "painting"
    protocol = "none"

    def is_ready(self) -> bool:
        return True

    def unready_reason(self) -> str:
        return ""

    def crop_geometry(self) -> CropGeometry:
        """The shipped model's: only the mask's surroundings come, as from the real bridge to Triton."""
        return SHIPPED_GEOMETRY

    def infer(
        self, request: InferenceRequest, *, on_progress: ProgressCallback, control: RunControl
    ) -> InferenceResult:
        image = request.image.copy()
        image[request.mask >= MASK_THRESHOLD] = 128
        return InferenceResult(image, request.seed)


def job_images() -> tuple[bytes, bytes]:
    """A JPEG photo and a PNG mask, as the app uploads them."""
    width, height = PHOTO_SIZE
    photo = textured_photo(width, height)
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4 : height // 2, width // 4 : width // 2] = 255
    photo_buffer, mask_buffer = io.BytesIO(), io.BytesIO()
    Image.fromarray(photo).save(photo_buffer, format="JPEG", quality=90)
    Image.fromarray(mask).save(mask_buffer, format="PNG")
    return photo_buffer.getvalue(), mask_buffer.getvalue()


def codec_ms(photo: bytes, mask: bytes) -> dict[str, float]:
    """The bridge's own decode and encode calls on these images, timed here (median ms)."""
    decoded = intake.read_photo(photo, 50_000_000)
    fitted = intake.fit_mask(intake.decode_mask(mask, 50_000_000), *decoded.pixels.shape[:2])
    edited = (
        PaintingModel()
        .infer(
            InferenceRequest(decoded.pixels, fitted, "", 1),
            on_progress=lambda *_: None,
            control=RunControl(0.0),
        )
        .image
    )

    def decode() -> None:
        intake.fit_mask(intake.decode_mask(mask, 50_000_000), *decoded.pixels.shape[:2])
        intake.read_photo(photo, 50_000_000)

    def encode() -> None:
        encode_result(decoded, edited)
        intake.encode_preview(edited, PREVIEW_MAX_SIDE)

    times = interleaved({"decode": decode, "encode": encode}, rounds=5)
    return {name: median_ms(samples) for name, samples in times.items()}


def run_level(
    clients: tuple[Any, ...],
    concurrency: int,
    jobs: int,
    images: tuple[bytes, bytes],
    per_user_limit: int = 0,
) -> dict[str, float]:
    """Jobs per second and mean phase seconds at one concurrency, on a fresh topic and subscription; each job
    is another user's (with a per-user limit, each claim still takes and frees its user's slot)."""
    system = JobSystem(*clients)
    system.create()
    sessions = [system.new_job(*images) for _ in range(jobs)]
    limit = (
        {"max_jobs_in_flight_per_user": per_user_limit, "topic": system.topic_id} if per_user_limit else {}
    )
    settings = system.settings(
        "127.0.0.1:1", max_concurrent_jobs=concurrency, progress_interval_s=1.0, **limit
    )
    # Published before the bridge starts, so that the process's CPU time while the jobs run is the bridge's
    # own (the emulators run in processes of their own).
    for user, session in sessions:
        system.publish({"userId": user, "sessionId": session, "steps": 1, "seed": 1})
    with running_bridge(settings, PaintingModel()) as bridge:
        started, cpu_started, services_started = time.perf_counter(), time.process_time(), children_cpu_s()
        wait_until(lambda: bridge.counted("done") >= jobs, timeout_s=120 + jobs)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        services_cpu = children_cpu_s() - services_started
    timings = [system.session(user, session)["timings"] for user, session in sessions]
    figures = {
        phase: statistics.fmean(t[phase] for t in timings) for phase in ("download", "inference", "upload")
    }
    figures["jobs/s"] = jobs / elapsed
    figures["bridge CPU"] = cpu / jobs
    figures["emulators CPU"] = services_cpu / jobs
    # Each job's share of the wall time, at this concurrency, minus what the bridge timed itself.
    figures["job wall"] = concurrency * elapsed / jobs
    return figures


@contextlib.contextmanager
def emulator_clients() -> Iterator[tuple[Any, ...]]:
    """The emulators, running, and the publisher, subscriber, storage and Firestore clients of the harness."""
    with running_emulators():
        credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
        subscriber = pubsub_v1.SubscriberClient(credentials=credentials)
        try:
            yield (
                pubsub_v1.PublisherClient(credentials=credentials),
                subscriber,
                storage.Client(project=PROJECT, credentials=credentials),
                firestore.Client(project=PROJECT, credentials=credentials),
            )
        finally:
            subscriber.close()


def plot(rows: list[dict[str, float]], plot_dir: Path) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    labels = [f"{int(row['concurrency'])} concurrent\n{row['jobs/s']:.1f} jobs/s" for row in rows]
    bottom = np.zeros(len(rows))
    for phase in ("download I/O", "decode", "inference", "encode", "upload I/O", "claim, status, ack"):
        values = np.array([row[phase] for row in rows])
        axis.bar(labels, values, bottom=bottom, label=phase)
        bottom += values
    axis.set_ylabel("ms per job (each job's share of the wall time)")
    axis.set_title("Bridge: time per job by phase (painting model)")
    axis.legend(fontsize=8)
    save_plot(figure, plot_dir, "bridge_throughput")


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__)
    arguments.add_argument(
        "--per-user-limit",
        type=int,
        default=0,
        help="max_jobs_in_flight_per_user (0, the default: none; deploy/config.env ships 2)",
    )
    args = arguments.parse_args(argv)
    # The bridge logs every job on stdout; here only its warnings matter, and stdout is for the table.
    configure_logging("WARNING", sys.stderr)
    levels, per_level = (QUICK_CONCURRENCY, 2) if args.quick else (CONCURRENCY, 4)
    images = job_images()
    rows = []
    with emulator_clients() as clients:
        codecs = codec_ms(*images)
        for concurrency in levels:
            figures = run_level(
                clients, concurrency, per_level * concurrency + 4, images, args.per_user_limit
            )
            wall_ms = figures["job wall"] * 1000
            download, upload = figures["download"] * 1000, figures["upload"] * 1000
            rows.append(
                {
                    "concurrency": concurrency,
                    "jobs/s": figures["jobs/s"],
                    "download I/O": max(0.0, download - codecs["decode"]),
                    "decode": min(download, codecs["decode"]),
                    "inference": figures["inference"] * 1000,
                    "encode": min(upload, codecs["encode"]),
                    "upload I/O": max(0.0, upload - codecs["encode"]),
                    "claim, status, ack": max(0.0, wall_ms - download - upload - figures["inference"] * 1000),
                    "bridge CPU": figures["bridge CPU"] * 1000,
                    "emulators CPU": figures["emulators CPU"] * 1000,
                }
            )
    phases = ["download I/O", "decode", "inference", "encode", "upload I/O", "claim, status, ack"]
    headers = [
        "concurrent jobs",
        "jobs/s",
        "goal",
        *(f"{phase} ms" for phase in phases),
        "bridge CPU ms per job",
        "jobs/s per bridge core",
        "emulators CPU ms per job",
    ]
    table = [
        [
            int(row["concurrency"]),
            f"{row['jobs/s']:.1f}",
            "met" if row["jobs/s"] >= GOAL_JOBS_PER_S else "not met",
            *(f"{row[phase]:.0f}" for phase in phases),
            f"{row['bridge CPU']:.0f}",
            f"{1000 / row['bridge CPU']:.1f}",
            f"{row['emulators CPU']:.0f}",
        ]
        for row in rows
    ]
    notes = [
        f"photo {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEG q90 + PNG mask; {per_level}N + 4 jobs at N concurrent; "
        f"goal ≥ {GOAL_JOBS_PER_S:g} jobs/s per bridge process; per-user limit: "
        f"{args.per_user_limit or 'none'} (each job another user's)",
        "phases are ms per job: at N concurrent jobs each job's share of the wall time is N x wall / jobs; "
        "decode and encode: the bridge's intake functions timed alone on the same images in this run "
        "(contention between concurrent jobs shows in the I/O columns)",
        "the emulators and the bridge share this machine's cores: lower bounds for a real deployment",
        "bridge CPU: this process's CPU time (the bridge's threads; the emulators are other processes) while "
        "the jobs ran, per job; jobs/s per bridge core = 1000 / that: what one core would carry if the cloud "
        "services did not share it; emulators CPU: the same for the Pub/Sub and Firestore emulators and "
        "fake-gcs-server (this process's descendants, from /proc)",
    ]
    report("Bridge throughput (painting model, emulators)", markdown_table(headers, table), notes)
    plot(rows, args.plot_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
