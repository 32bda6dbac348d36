"""Image intake: a 12 MP EXIF-rotated JPEG to the working tensor (decode, orient, crop to mask, resize).

Four paths, interleaved, each ending with the RGB array the denoiser would get:
- naive: full decode, orient, convert, resize the whole frame to the working size;
- service: the bridge's `read_photo` (full decode, viewed upright) and what it sends the model (the
  model's context, cut contiguous, and box-averaged to about the working size when it is at least twice
  that: `fluxfill.bridge.context`), then the engine's own plan and `resize_rgb` of it (the code the service
  runs, split across bridge and model; the bridge's composite after the model is not part of intake);
- draft candidate: `decode_crop_draft` below, a bench-only function (the composite would need a second,
  full decode): JPEG draft mode decodes at 1/2, 1/4
  or 1/8 scale (DCT scaling in libjpeg) when the crop at that scale still has at least the working size's
  pixels, then orients, crops and resizes that smaller image;
- reduced libjpeg-turbo decode: the same with the bridge's own decoder's DCT scaling (simplejpeg), bench only.
Peak memory: each path runs once in a fresh process; the figure is the rise of peak RSS (VmHWM, reset
through /proc/self/clear_refs) over the process's RSS just before, so PIL's own buffers count too.

Run: `python -m bench.intake [--quick]`.
"""

import io
import re
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import numpy.typing as npt
import simplejpeg
from PIL import Image, ImageOps

from bench.common import (
    engine_plan,
    interleaved,
    markdown_table,
    median_ms,
    parser,
    pyplot,
    report,
    save_plot,
    shipped_parameters,
)
from bench.photo import blob_mask, photo_bytes
from fluxfill.bridge import orientation
from fluxfill.bridge.context import plan_context, sent
from fluxfill.bridge.intake import read_photo
from fluxfill.inpaint.config import ModelConfig, parse_model_config
from fluxfill.inpaint.geometry import Box, resize_rgb, working_size

COVERAGES = (0.02, 0.10, 0.30, 0.60)
QUICK_COVERAGES = (0.30,)
GOAL_SPEEDUP = 3.0
UInt8Array = npt.NDArray[np.uint8]
IntakePath = Callable[[bytes, UInt8Array, ModelConfig], UInt8Array]


def naive(data: bytes, _mask: UInt8Array, config: ModelConfig) -> UInt8Array:
    """Decode everything, then shrink the whole frame to the working size."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    width, height = working_size(
        image.width, image.height, config.min_working_pixels, config.max_working_pixels
    )
    return np.asarray(image.resize((width, height), Image.Resampling.LANCZOS), dtype=np.uint8)


def service(data: bytes, mask: UInt8Array, config: ModelConfig) -> UInt8Array:
    """The bridge's decode and its context for the model (cut, reduced when far larger than the working
    size: fluxfill.bridge.context), then the engine's own plan and single resize of what it was sent."""
    photo = read_photo(data, config.max_input_pixels)
    context = plan_context(mask, config.crop_geometry)
    image, region = sent(photo.pixels, mask, context, photo.orientation)
    plan = engine_plan(region, config, config.crop_to_mask)
    rows, cols = plan.box.slices()
    return resize_rgb(orientation.contiguous(image[rows, cols]), plan.working_width, plan.working_height)


def draft_reduction(box: Box, working_width: int, working_height: int) -> int:
    """The largest JPEG DCT reduction (1, 2, 4, 8) keeping the crop at least as large as the working size."""
    reduction = 1
    while (
        reduction < 8
        and box.width // (2 * reduction) >= working_width
        and box.height // (2 * reduction) >= working_height
    ):
        reduction *= 2
    return reduction


def decode_crop_draft(data: bytes, mask: UInt8Array, config: ModelConfig) -> UInt8Array:
    """Decode at the coarsest JPEG scale that still covers the working size, then orient, crop, resize."""
    plan = engine_plan(mask, config, config.crop_to_mask)
    reduction = draft_reduction(plan.box, plan.working_width, plan.working_height)
    image = Image.open(io.BytesIO(data))
    if reduction > 1:
        image.draft("RGB", (image.width // reduction, image.height // reduction))
    upright = ImageOps.exif_transpose(image).convert("RGB")
    # Draft sizes round up, so scale the box by the size actually decoded.
    scale_x, scale_y = upright.width / mask.shape[1], upright.height / mask.shape[0]
    box = plan.box
    crop = upright.crop(
        (
            round(box.left * scale_x),
            round(box.top * scale_y),
            round(box.right * scale_x),
            round(box.bottom * scale_y),
        )
    )
    resized = crop.resize((plan.working_width, plan.working_height), Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8)


def reduced_turbo(data: bytes, mask: UInt8Array, config: ModelConfig) -> UInt8Array:
    """As the draft candidate, with libjpeg-turbo's own DCT scaling (simplejpeg, the bridge's decoder) and
    the crop turned as a view: the decoder's reduced-size decoding at its cheapest."""
    plan = engine_plan(mask, config, config.crop_to_mask)
    reduction = draft_reduction(plan.box, plan.working_width, plan.working_height)
    with Image.open(io.BytesIO(data)) as header:
        turn = orientation.orientation_of(header)
        stored_width, stored_height = header.size
    stored = simplejpeg.decode_jpeg(
        data,
        colorspace="RGB",
        min_width=-(-stored_width // reduction),
        min_height=-(-stored_height // reduction),
        min_factor=reduction,
    )
    upright = orientation.upright_view(stored, turn)
    scale_y, scale_x = upright.shape[0] / mask.shape[0], upright.shape[1] / mask.shape[1]
    box = plan.box
    crop = upright[
        round(box.top * scale_y) : round(box.bottom * scale_y),
        round(box.left * scale_x) : round(box.right * scale_x),
    ]
    return resize_rgb(orientation.contiguous(crop), plan.working_width, plan.working_height)


NAIVE = "naive (decode all, resize frame)"
PATHS: dict[str, IntakePath] = {
    NAIVE: naive,
    "service (bridge decode + context, reduced when large + engine crop)": service,
    "draft candidate (bench only)": decode_crop_draft,
    "reduced libjpeg-turbo decode (bench only)": reduced_turbo,
}


def _kib(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(match.group(1))


def peak_rss_rise_mib(name: str, data: bytes, mask: UInt8Array, config: ModelConfig) -> float:
    """Run one path in this (fresh) process; the rise of peak RSS over the RSS before it, in MiB."""
    Path("/proc/self/clear_refs").write_text("5")
    before = _kib("VmRSS")
    PATHS[name](data, mask, config)
    return (_kib("VmHWM") - before) / 1024


def peak_memory(data: bytes, mask: UInt8Array, config: ModelConfig) -> dict[str, float]:
    """Each path's peak RSS rise, each measured once in a new process so no freed heap is reused."""
    peaks = {}
    for name in PATHS:
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            peaks[name] = pool.submit(peak_rss_rise_mib, name, data, mask, config).result()
    return peaks


def measure(data: bytes, coverage: float, config: ModelConfig, rounds: int) -> list[list[str]]:
    """Rows of the table for one mask coverage."""
    mask = blob_mask(coverage)
    shapes = {name: path(data, mask, config).shape for name, path in PATHS.items()}
    times = interleaved({name: partial(path, data, mask, config) for name, path in PATHS.items()}, rounds)
    peaks = peak_memory(data, mask, config)
    naive_ms = median_ms(times[NAIVE])
    rows = []
    for name in PATHS:
        speedup = naive_ms / median_ms(times[name])
        goal = "—" if name == NAIVE else ("met" if speedup >= GOAL_SPEEDUP else "not met")
        tensor = f"{shapes[name][1]}x{shapes[name][0]}"
        rows.append(
            [
                f"{coverage:.0%}",
                name,
                f"{median_ms(times[name]):.0f}",
                f"{speedup:.2f}x",
                goal,
                f"{peaks[name]:.0f}",
                tensor,
            ]
        )
    return rows


def plot(rows: list[list[str]], plot_dir: Path) -> None:
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    coverages = list(dict.fromkeys(row[0] for row in rows))
    width = 0.8 / len(PATHS)
    for index, name in enumerate(PATHS):
        mine = [row for row in rows if row[1] == name]
        offsets = [position + index * width for position in range(len(coverages))]
        label = name.split(" (")[0]
        left.bar(offsets, [float(row[2]) for row in mine], width, label=label)
        right.bar(offsets, [float(row[5]) for row in mine], width, label=label)
    for axis, ylabel in ((left, "median ms"), (right, "peak RSS rise, MiB")):
        axis.set_xticks([position + width for position in range(len(coverages))], coverages)
        axis.set_xlabel("mask coverage")
        axis.set_ylabel(ylabel)
    left.legend()
    figure.suptitle("12 MP JPEG to working tensor")
    save_plot(figure, plot_dir, "intake")


def decoder_alone(data: bytes, rounds: int) -> str:
    """simplejpeg's decode of the whole photo at each DCT scale, interleaved: what a reduced decode saves."""
    with Image.open(io.BytesIO(data)) as header:
        width, height = header.size

    def at(scale: int) -> Callable[[], object]:
        return partial(
            simplejpeg.decode_jpeg,
            data,
            colorspace="RGB",
            min_width=-(-width // scale),
            min_height=-(-height // scale),
            min_factor=scale,
        )

    times = interleaved({f"1/{scale}": at(scale) for scale in (1, 2, 4, 8)}, rounds)
    medians = ", ".join(f"{name} {median_ms(samples):.0f} ms" for name, samples in times.items())
    return f"the decoder alone (simplejpeg, whole photo, stored grid) at each scale: {medians}"


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__).parse_args(argv)
    coverages, rounds = (QUICK_COVERAGES, 2) if args.quick else (COVERAGES, 7)
    config = parse_model_config({**shipped_parameters(), "weights_dir": "/unused"})
    data = photo_bytes()
    rows = [row for coverage in coverages for row in measure(data, coverage, config, rounds)]
    notes = [
        f"photo: 4000x3000 JPEG q90, EXIF orientation 6 ({len(data) / 2**20:.1f} MiB), upright 3000x4000; "
        f"mask: an ellipse; shipped crop and working-size parameters; {rounds} interleaved rounds",
        "working tensor: the naive path's is the whole frame, the others' the mask's crop",
        f"goal: ≥ {GOAL_SPEEDUP:g}x faster than naive",
        decoder_alone(data, rounds),
    ]
    headers = [
        "mask",
        "path",
        "median ms",
        "speed-up vs naive",
        "goal",
        "peak RSS rise MiB",
        "working tensor",
    ]
    report("Image intake: 12 MP JPEG to working tensor", markdown_table(headers, rows), notes)
    plot(rows, args.plot_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
