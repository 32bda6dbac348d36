"""The bridge's Triton call for a 12 MP photo: the whole photo (until 2026-12-04), the model's context at full
resolution (`reduce_context=false`) and the context reduced to about the model's working size and composited
in the bridge (the default since 2026-12-04; fluxfill.bridge.context), side by side in one run.

Real parts only: a real tritonserver serving the repository's models with the tiny FLUX Fill model, called
through the bridge's own adapter (`TritonInpaintModel`, gRPC stream, as shipped). The model's crop parameters
are the shipped ones, read from the server as the bridge reads them; the working size is kept small (64K to
256K pixels) so that the denoiser's own time, the same for both, does not hide what differs: the photo and
mask sent, the image answered, the model's crop, resizes and composite, and for the reduced context the
bridge's own reduction and composite. Per mask coverage (ellipses of 2, 10 and 30 % of a 4000x3000 photo),
the variants interleaved round-robin; the first two are checked to give the same image, and the reduced one
to keep every pixel beyond the feather and repaint the mask.

Run: `python -m bench.context_request [--quick]`.
"""

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

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
)
from bench.photo import blob_mask, textured_photo
from fluxfill.bridge.adapters.triton import TritonInpaintModel
from fluxfill.bridge.context import Context, context_box, cut, edited, pasted, plan_context, sent
from fluxfill.bridge.ports import InferenceRequest, RunControl
from fluxfill.client.local_server import LocalTritonServer
from fluxfill.inpaint.contract import MODEL_NAME, STREAM_MODEL_NAME
from fluxfill.inpaint.geometry import feather_alpha
from fluxfill.inpaint.tiny import ensure_tiny_model

SIZE = (4000, 3000)
QUICK_SIZE = (2400, 1800)
COVERAGES = (0.02, 0.10, 0.30)
QUICK_COVERAGES = (0.10,)
STEPS = 1
SERVER_PARAMETERS = {
    "min_working_pixels": "65536",
    "max_working_pixels": "262144",
    "warmup_steps": "1",
    "default_steps": str(STEPS),
}
VARIANTS = ("whole photo (until 2026-12-04)", "context, full resolution", "context reduced (now)")
Image = npt.NDArray[np.uint8]


def callers(model: TritonInpaintModel, photo: Image, mask: Image) -> dict[str, Callable[[], Image]]:
    """The two ways of asking for one edit, each returning the whole edited photo."""

    def ask(image: Image, region: Image) -> Image:
        request = InferenceRequest(image, region, "a cat on a sofa", seed=7, steps=STEPS)
        control = RunControl(deadline=math.inf)
        return model.infer(request, on_progress=lambda *_: None, control=control).image

    def whole() -> Image:
        return ask(photo, mask)

    def context() -> Image:
        box = context_box(mask, model.crop_geometry())
        if box is None:
            raise RuntimeError("the mask's context is the whole photo: nothing to compare")
        return pasted(photo, box, ask(*cut(photo, mask, box)))

    def reduced() -> Image:
        plan = reduced_context(model, mask)
        return edited(photo.copy(), mask, plan, ask(*sent(photo, mask, plan))).image

    return dict(zip(VARIANTS, (whole, context, reduced), strict=True))


def reduced_context(model: TritonInpaintModel, mask: Image) -> Context:
    """The bridge's plan (reduction 1 when the context is under twice the working size: then the same call as
    the full-resolution context)."""
    return plan_context(mask, model.crop_geometry())


def check(model: TritonInpaintModel, photo: Image, mask: Image, images: list[Image]) -> None:
    """The whole photo and its context give the same image; the reduced context keeps every pixel beyond
    the feather and repaints the mask."""
    whole, context, reduced = images
    if not np.array_equal(whole, context):
        raise RuntimeError("the whole photo and its context gave different images: unequal work")
    geometry = model.crop_geometry()
    assert geometry is not None  # callers() needed it
    if reduced_context(model, mask).reduction == 1:
        if not np.array_equal(reduced, context):
            raise RuntimeError("an unreduced context gave another image than the context")
        return
    alpha = feather_alpha(mask >= 128, geometry.feather_pixels)
    if not np.array_equal(reduced[alpha == 0], photo[alpha == 0]):
        raise RuntimeError("the reduced context changed pixels beyond the feather")
    if np.array_equal(reduced[alpha == 1], photo[alpha == 1]):
        raise RuntimeError("the reduced context did not repaint the mask")


def measure(model: TritonInpaintModel, width: int, height: int, coverage: float, rounds: int) -> list[str]:
    photo, mask = textured_photo(width, height), blob_mask(coverage, width, height)
    calls = callers(model, photo, mask)
    check(model, photo, mask, [call() for call in calls.values()])
    times = interleaved(calls, rounds)
    box = context_box(mask, model.crop_geometry())
    assert box is not None  # callers() checked
    factor = reduced_context(model, mask).reduction
    whole_mb = photo.nbytes * 2 + mask.nbytes  # photo and mask in, the image out
    context_mb = box.area * 7  # 3 bytes a pixel in and out, one of mask
    reduced_mb = -(-box.height // factor) * -(-box.width // factor) * 7
    whole_ms, context_ms, reduced_ms = (median_ms(times[name]) for name in VARIANTS)
    return [
        f"{coverage:.0%}",
        f"{box.width}x{box.height}, 1/{factor}",
        f"{whole_ms:.0f}",
        f"{context_ms:.0f}",
        f"{reduced_ms:.0f}",
        f"{whole_ms / reduced_ms:.1f}x",
        f"{context_ms / reduced_ms:.1f}x",
        f"{whole_mb / 1e6:.1f}",
        f"{context_mb / 1e6:.1f}",
        f"{reduced_mb / 1e6:.2f}",
    ]


def plot(rows: list[list[str]], plot_dir: Path) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    labels = [row[0] for row in rows]
    positions = np.arange(len(rows))
    for index, name in enumerate(VARIANTS):
        axis.bar(positions + (index - 1) * 0.27, [float(row[2 + index]) for row in rows], 0.27, label=name)
    axis.set_xticks(positions, labels)
    axis.set_xlabel("mask coverage")
    axis.set_ylabel("ms per Triton call (median)")
    axis.set_title("The bridge's Triton call: whole photo, the model's context, reduced")
    axis.legend()
    save_plot(figure, plot_dir, "context_request")


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__).parse_args(argv)
    (width, height), coverages, rounds = (
        (QUICK_SIZE, QUICK_COVERAGES, 2) if args.quick else (SIZE, COVERAGES, 7)
    )
    tiny = ensure_tiny_model(TINY_MODEL_DIR)
    parameters = {"weights_dir": str(tiny.pipeline_dir), **SERVER_PARAMETERS}
    with LocalTritonServer(
        MODEL_REPOSITORY,
        parameters={STREAM_MODEL_NAME: parameters},
        required_models=[STREAM_MODEL_NAME, MODEL_NAME],
    ) as server:
        model = TritonInpaintModel(server.grpc_url, "grpc-stream")
        rows = [measure(model, width, height, coverage, rounds) for coverage in coverages]
    headers = [
        "mask",
        "context, reduction",
        f"{VARIANTS[0]}: ms",
        f"{VARIANTS[1]}: ms",
        f"{VARIANTS[2]}: ms",
        "reduced vs whole",
        "reduced vs full-resolution context",
        "MB moved (whole)",
        "MB moved (context)",
        "MB moved (reduced)",
    ]
    notes = [
        f"{width}x{height} textured photo, tiny model, {STEPS} step, working size 64K-256K pixels, "
        f"{rounds} interleaved rounds; the whole photo and its context checked to give the same image, the "
        "reduced context to keep every pixel beyond the feather and repaint the mask",
        "ms: the bridge adapter's call (gRPC stream) plus, for the contexts, cutting (and reducing) them and "
        "pasting (compositing) the answer into a copy of the photo",
        "MB moved: photo and mask sent plus the image answered (3 + 1 + 3 bytes a pixel)",
    ]
    title = "The bridge's Triton call: whole photo, the model's context, reduced"
    report(title, markdown_table(headers, rows), notes)
    plot(rows, args.plot_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
