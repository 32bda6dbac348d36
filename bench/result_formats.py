"""Job path on phone JPEGs, by phase: PNG results (the bridge until 2026-12) against results in the
original's format (a JPEG spliced in the DCT domain), side by side in one run.

The real bridge (`build_bridge`, pull, Firestore claims and status writes, Cloud Storage reads and
writes) runs in this process against the Pub/Sub and Firestore emulators and fake-gcs-server; the model
paints the mask grey at once (`PaintingModel`), so the edit is real but costs next to nothing. For a 12 MP
phone JPEG (4000x3000 stored, EXIF orientation 6, q90, textured) and a 1 MP one, with a 10 % blob mask, each
round runs a few jobs one at a time through a bridge per variant (`result_format` png, then original, then
original with `reduce_context` off; the order rotated each round). Per job: the bridge's own phase timings
from the session (download = fetch + decode; upload = composite, encode and write of both objects), the rest
of the job's wall time (claim, status writes, ack), the process's CPU time per job (the jobs are published
before the bridge starts, so it is the bridge's own), and the edited object's bytes against the original's.

Goals (#15): bridge work per 12 MP job (everything but the model) >= 10x less than with PNG results;
result bytes <= 1.2x the original's.

Run: `python -m bench.result_formats [--quick]` (needs Java for the emulators, as the integration tests).
"""

import io
import statistics
import sys
import time
from typing import Any

import numpy as np
from PIL import Image

from bench.bridge_throughput import PaintingModel, emulator_clients
from bench.common import markdown_table, parser, pyplot, report, save_plot
from bench.photo import ORIENTATION_TAG, ROTATE_90_CW, blob_mask, photo_bytes, textured_photo
from fluxfill.bridge.logs import configure_logging
from tests.integration.bridge.harness import JobSystem, running_bridge, wait_until

# Bridge settings per variant. The third shows what the reduced context (fluxfill.bridge.context) costs the
# bridge: its composite, which with the context at full resolution the model does (here: the painting model,
# whose time is not bridge work; on a GPU host, the model instance between GPU steps).
VARIANTS: dict[str, dict[str, Any]] = {
    "PNG result": {"result_format": "png"},
    "original's format": {"result_format": "original"},
    "original's format, context at full resolution": {"result_format": "original", "reduce_context": False},
}
MASK_COVERAGE = 0.10
WORK_GOAL, BYTES_GOAL = 10.0, 1.2
PHASES = ("download", "upload", "claim, status, ack")


def one_megapixel_photo() -> bytes:
    """A 1 MP phone-style JPEG (stored sideways with EXIF orientation 6, like the 12 MP one)."""
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = ROTATE_90_CW
    buffer = io.BytesIO()
    Image.fromarray(textured_photo(1152, 864)).save(buffer, format="JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


def mask_for(photo: bytes) -> bytes:
    """A PNG blob mask over 10 % of the upright photo."""
    with Image.open(io.BytesIO(photo)) as image:
        stored_width, stored_height = image.size
    buffer = io.BytesIO()
    # Stored sideways: upright, width and height swap.
    Image.fromarray(blob_mask(MASK_COVERAGE, stored_height, stored_width)).save(buffer, format="PNG")
    return buffer.getvalue()


def run_jobs(
    clients: tuple[Any, ...], overrides: dict[str, Any], photo: bytes, mask: bytes, jobs: int
) -> dict[str, Any]:
    """Run `jobs` jobs one at a time through a fresh bridge; per-job phase seconds and the result bytes."""
    system = JobSystem(*clients)
    system.create()
    sessions = []
    for _ in range(jobs):
        user, session = system.new_job(photo, mask)
        sessions.append((user, session))
    settings = system.settings("127.0.0.1:1", max_concurrent_jobs=1, progress_interval_s=1.0, **overrides)
    # Published before the bridge starts: this process's CPU time while the jobs run is the bridge's own.
    for user, session in sessions:
        system.publish({"userId": user, "sessionId": session, "steps": 1, "seed": 1})
    with running_bridge(settings, PaintingModel()) as bridge:
        started, cpu_started = time.perf_counter(), time.process_time()
        wait_until(lambda: bridge.counted("done") >= jobs, timeout_s=120 + 20 * jobs)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    documents = [system.session(user, session) for user, session in sessions]
    timings = [document["timings"] for document in documents]
    download = statistics.fmean(t["download"] for t in timings)
    upload = statistics.fmean(t["upload"] for t in timings)
    inference = statistics.fmean(t["inference"] for t in timings)
    wall = elapsed / jobs
    user, session = sessions[0]
    edited_name = documents[0]["result"]["paths"]["edited"].rsplit("/", 1)[-1]
    return {
        "download": download,
        "upload": upload,
        "claim, status, ack": max(0.0, wall - download - upload - inference),
        "bridge work": wall - inference,
        "bridge CPU": cpu / jobs,
        "bytes": len(system.download(user, session, edited_name)),
        "encoding": documents[0]["result"].get("encoding", "?"),
    }


def side_by_side(clients: tuple[Any, ...], photo: bytes, rounds: int, jobs: int) -> dict[str, dict[str, Any]]:
    """Each variant's medians over the rounds, the variants' order rotated each round."""
    mask = mask_for(photo)
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    for index in range(rounds):
        for name in names[index % len(names) :] + names[: index % len(names)]:
            samples[name].append(run_jobs(clients, VARIANTS[name], photo, mask, jobs))

    def median(name: str, key: str) -> float:
        return float(statistics.median(sample[key] for sample in samples[name]))

    return {
        name: {
            **{key: median(name, key) for key in (*PHASES, "bridge work", "bridge CPU", "bytes")},
            "encoding": samples[name][0]["encoding"],
        }
        for name in VARIANTS
    }


def plot(results: dict[str, dict[str, dict[str, Any]]], plot_dir: Any) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(1, len(results), figsize=(9, 4))
    for axis, (size, variants) in zip(np.atleast_1d(axes), results.items(), strict=True):
        bottom = np.zeros(len(variants))
        for phase in PHASES:
            values = np.array([figures[phase] * 1000 for figures in variants.values()])
            axis.bar(list(variants), values, bottom=bottom, label=phase)
            bottom += values
        axis.set_title(f"{size} phone JPEG")
        axis.set_ylabel("bridge ms per job (model excluded)")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    figure.suptitle("Bridge work per job: PNG results vs the original's format")
    save_plot(figure, plot_dir, "result_formats")


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__).parse_args(argv)
    configure_logging("WARNING", sys.stderr)
    rounds, jobs = (1, 1) if args.quick else (3, 3)
    # Quick mode (the tests' smoke run) skips the 12 MP photo: its PNG results alone take seconds a job.
    photos = (
        {"1 MP": one_megapixel_photo()}
        if args.quick
        else {"12 MP": photo_bytes(), "1 MP": one_megapixel_photo()}
    )
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with emulator_clients() as clients:
        for size, photo in photos.items():
            results[size] = side_by_side(clients, photo, rounds, jobs)
    headers = [
        "photo",
        "result",
        "encoding",
        *(f"{p} ms" for p in PHASES),
        "bridge work ms",
        "x less",
        "bridge CPU ms",
        "x less CPU",
        "result bytes",
        "x original",
        "goals",
    ]
    table = []
    for size, variants in results.items():
        baseline = variants["PNG result"]["bridge work"]
        original_bytes = len(photos[size])
        for name, figures in variants.items():
            less = baseline / figures["bridge work"]
            ratio = figures["bytes"] / original_bytes
            goals = "-"
            if name != "PNG result" and size == "12 MP":
                work = "met" if less >= WORK_GOAL else "not met"
                goals = f"work {work}, bytes {'met' if ratio <= BYTES_GOAL else 'not met'}"
            table.append(
                [
                    size,
                    name,
                    figures["encoding"],
                    *(f"{figures[p] * 1000:.0f}" for p in PHASES),
                    f"{figures['bridge work'] * 1000:.0f}",
                    f"{less:.1f}",
                    f"{figures['bridge CPU'] * 1000:.0f}",
                    f"{variants['PNG result']['bridge CPU'] / figures['bridge CPU']:.1f}",
                    f"{int(figures['bytes']):,}",
                    f"{ratio:.2f}",
                    goals,
                ]
            )
    notes = [
        f"{rounds} rounds x {jobs} jobs one at a time per variant, variants alternating; medians of the "
        "rounds; 10 % blob mask painted grey by the model at once",
        "originals (JPEG q90, EXIF orientation 6): "
        + ", ".join(f"{size} {len(photo):,} bytes" for size, photo in photos.items()),
        f"goals (12 MP, #15): bridge work >= {WORK_GOAL:g}x less than PNG results; result <= {BYTES_GOAL:g}x "
        "the original's bytes",
        "the emulators and the bridge share this machine's cores; bridge work is wall time per job less the "
        "model's, bridge CPU this process's CPU time per job (all its threads: the read ahead of the "
        "coefficients, the preview; the painting model's few ms included)",
    ]
    report(
        "Result formats: bridge work per job (emulators, painting model)",
        markdown_table(headers, table),
        notes,
    )
    plot(results, args.plot_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
