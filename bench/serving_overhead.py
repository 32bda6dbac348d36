"""Serving overhead: the same request in-process and through Triton (HTTP unary, gRPC unary, gRPC stream).

Real parts only: the tiny FLUX Fill model, the in-process core (`FluxFillService` with the diffusers
denoiser) and a real tritonserver serving the repository's two models with the same parameters.
Two measurements per size, interleaved:
- the full request (denoising included): added ms is the median of per-round differences to in-process,
  and still carries the denoiser's own jitter;
- the same tensors with an empty mask, which the model answers without denoising: what is left is the
  serving stack alone (transfer, (de)serialisation, queueing, the BLS hop), free of compute noise.
`flux_fill` (unary) forwards through BLS to `flux_fill_stream`, so its overhead includes that in-server hop.

Run: `python -m bench.serving_overhead [--quick]`.
"""

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from bench.common import (
    MODEL_REPOSITORY,
    TINY_MODEL_DIR,
    interleaved,
    markdown_table,
    median_ms,
    parser,
    pyplot,
    report,
    save_plot,
    shipped_parameters,
)
from fluxfill.client.inference import FluxFillClient, contract_arrays
from fluxfill.client.local_server import LocalTritonServer
from fluxfill.inpaint.contract import INPUTS, MODEL_NAME, STREAM_MODEL_NAME
from fluxfill.inpaint.service import FluxFillService
from fluxfill.inpaint.tiny import ensure_tiny_model

# (width, height): the sizes, then a 12 MP photo as the bridge sends it (cropped to 1 MP inside).
SIZES = ((256, 256), (512, 512), (1024, 1024), (3000, 4000))
QUICK_SIZES = ((256, 256),)
STEPS = 2
GOAL_MS, GOAL_PERCENT, GOAL_SIZE, GOAL_PIXELS = 3.0, 5.0, "1024x1024", 1024 * 1024
IN_PROCESS = "in-process"
PATHS = ("HTTP unary (flux_fill)", "gRPC unary (flux_fill)", "gRPC stream (flux_fill_stream)")
# The working size follows the crop exactly (no resize) so each size really is that much work.
SERVER_PARAMETERS = {
    "min_working_pixels": "16384",
    "max_working_pixels": "1048576",
    "warmup_steps": "1",
    "default_steps": str(STEPS),
}
Arrays = dict[str, npt.NDArray[Any]]


def scene(width: int, height: int, empty_mask: bool) -> Arrays:
    """A noise photo with a centred mask of a quarter of its area (or none), as the contract's tensors."""
    image = np.random.default_rng(width * height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), np.uint8)
    if not empty_mask:
        mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 255
    return contract_arrays(image, mask, "a cat on a sofa", steps=STEPS, seed=7)


def _inputs(module: Any, arrays: Arrays) -> list[Any]:
    types = {spec.name: spec.datatype for spec in INPUTS}
    inputs = []
    for name, array in arrays.items():
        tensor = module.InferInput(name, list(array.shape), types[name])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


class Paths:
    """One caller per serving path, each returning the output image; clients are kept open between calls."""

    def __init__(self, service: FluxFillService, server: LocalTritonServer) -> None:
        self._service = service
        self._http = httpclient.InferenceServerClient(server.http_url)
        self._grpc = grpcclient.InferenceServerClient(server.grpc_url)
        self._stream = FluxFillClient(server.grpc_url, "grpc")

    def callers(self, arrays: Arrays) -> dict[str, Callable[[], npt.NDArray[np.uint8]]]:
        def in_process() -> npt.NDArray[np.uint8]:
            return self._service.run(arrays).result.image

        def http() -> npt.NDArray[np.uint8]:
            # Tensors are serialised per call, as any caller must.
            return self._http.infer(MODEL_NAME, _inputs(httpclient, arrays)).as_numpy("IMAGE")  # type: ignore[no-any-return]

        def grpc() -> npt.NDArray[np.uint8]:
            return self._grpc.infer(MODEL_NAME, _inputs(grpcclient, arrays)).as_numpy("IMAGE")  # type: ignore[no-any-return]

        def stream() -> npt.NDArray[np.uint8]:
            image = arrays["IMAGE"]
            seed = int(arrays["SEED"][0])
            return self._stream.inpaint(
                image, arrays["MASK"], "a cat on a sofa", steps=STEPS, seed=seed
            ).image

        return dict(zip((IN_PROCESS, *PATHS), (in_process, http, grpc, stream), strict=True))

    def close(self) -> None:
        self._http.close()
        self._grpc.close()
        self._stream.close()


def check_same_output(callers: dict[str, Callable[[], npt.NDArray[np.uint8]]]) -> None:
    """Every path must do the same work: outputs are bitwise identical for one seed, or the bench is wrong."""
    reference = callers[IN_PROCESS]()
    for name, call in callers.items():
        if not np.array_equal(call(), reference):
            raise RuntimeError(f"{name} returned another image than in-process: the paths differ")


def paired_added_ms(times: dict[str, list[float]], name: str) -> float:
    """Median over rounds of (path - in-process), which cancels drift shared by one round."""
    return median_ms([t - base for t, base in zip(times[name], times[IN_PROCESS], strict=True)])


def measure(paths: Paths, width: int, height: int, rounds: int) -> list[list[str]]:
    """Rows of the table for one size."""
    size = f"{width}x{height}"
    # A 12 MP request costs seconds in-process: fewer rounds there keep `make bench` to minutes.
    rounds = rounds if width * height <= GOAL_PIXELS else max(3, rounds // 3)
    full = paths.callers(scene(width, height, empty_mask=False))
    check_same_output(full)
    full_times = interleaved(full, rounds)
    empty_times = interleaved(paths.callers(scene(width, height, empty_mask=True)), rounds * 3)
    base = median_ms(full_times[IN_PROCESS])
    rows = [[size, IN_PROCESS, f"{base:.1f}", "—", "—", "—"]]
    for name in PATHS:
        added_empty = paired_added_ms(empty_times, name)
        rows.append(
            [
                size,
                name,
                f"{median_ms(full_times[name]):.1f}",
                f"{paired_added_ms(full_times, name):+.1f}",
                f"{added_empty:+.2f}",
                f"{100 * added_empty / base:+.2f}%",
            ]
        )
    return rows


def plot(rows: list[list[str]], plot_dir: Any) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    sizes = list(dict.fromkeys(row[0] for row in rows))
    for name in PATHS:
        values = [float(row[4]) for size in sizes for row in rows if row[0] == size and row[1] == name]
        axis.plot(sizes, values, marker="o", label=name)
    axis.axhline(GOAL_MS, color="grey", linestyle="--", label=f"goal ≤ {GOAL_MS:g} ms")
    axis.set_xlabel("request size")
    axis.set_yscale("log")
    axis.set_ylabel("ms added over in-process (serving only)")
    axis.set_title("Triton's serving overhead (tiny model, median)")
    axis.legend()
    save_plot(figure, plot_dir, "serving_overhead")


def goal_notes(rows: list[list[str]]) -> list[str]:
    at_goal = [row for row in rows if row[0] == GOAL_SIZE and row[1] != IN_PROCESS]
    if not at_goal:
        return [f"goal (≤ {GOAL_MS:g} ms and ≤ {GOAL_PERCENT:g}% at {GOAL_SIZE}): not measured in quick mode"]
    notes = []
    for row in at_goal:
        added, percent = float(row[4]), float(row[5].rstrip("%"))
        met = added <= GOAL_MS and percent <= GOAL_PERCENT
        verdict = "met" if met else "NOT met"
        notes.append(f"goal at {GOAL_SIZE} for {row[1]}: {added:+.2f} ms, {percent:+.2f}% — {verdict}")
    return notes


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__).parse_args(argv)
    sizes, rounds = (QUICK_SIZES, 3) if args.quick else (SIZES, 7)
    tiny = ensure_tiny_model(TINY_MODEL_DIR)
    parameters = {"weights_dir": str(tiny.pipeline_dir), **SERVER_PARAMETERS}
    if args.quick:
        # Warm-up runs at max_working_pixels: at the quick size it costs next to nothing.
        parameters["max_working_pixels"] = str(QUICK_SIZES[0][0] * QUICK_SIZES[0][1])
    service = FluxFillService.load({**shipped_parameters(), **parameters}, "cpu")
    with LocalTritonServer(
        MODEL_REPOSITORY,
        parameters={STREAM_MODEL_NAME: parameters},
        required_models=[STREAM_MODEL_NAME, MODEL_NAME],
    ) as server:
        paths = Paths(service, server)
        try:
            rows = [row for width, height in sizes for row in measure(paths, width, height, rounds)]
        finally:
            paths.close()
    headers = ["size", "path", "median ms", "added ms (full request)", "added ms (serving only)", "added %"]
    notes = [
        f"tiny model, {STEPS} steps, working size = crop size up to 1 MP; {rounds} interleaved rounds "
        f"({max(3, rounds // 3)} at 12 MP; x3 for serving only)",
        "added ms (full request): median of per-round differences; includes the denoiser's jitter",
        "added ms (serving only): the same tensors with an empty mask (the model skips denoising); "
        "added % = that over the in-process full request",
        "flux_fill forwards through BLS to flux_fill_stream: its overhead includes that in-server hop; "
        "the stream path opens a new gRPC stream per call, as the client does",
        *goal_notes(rows),
    ]
    report("Serving overhead: Triton vs in-process", markdown_table(headers, rows), notes)
    plot(rows, args.plot_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
