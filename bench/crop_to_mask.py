"""Crop-to-mask effect on a 12 MP photo: latent tokens denoised and the tiny model's time vs full frame.

For masks covering 2%, 10%, 30% and 60% of a 3000x4000 photo, with the shipped crop and working-size
parameters (working size between min_working_pixels and max_working_pixels):
- tokens = (working width / 16) x (working height / 16), what the transformer attends over each step;
- "full frame, same density": the whole photo at the crop's pixel density (what keeping the crop's detail
  over the full frame would cost, computed, not run);
- "full frame, capped": `crop_to_mask=false` with the same caps, which runs, at a lower density.
The wall times are the in-process core (`FluxFillService`, tiny model, real diffusers pipeline) on the
decoded photo, crop and full frame interleaved.

Run: `python -m bench.crop_to_mask [--quick]`.
"""

import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

from bench.common import (
    TINY_MODEL_DIR,
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
from bench.photo import UPRIGHT_SIZE, blob_mask, photo_bytes
from fluxfill.client.inference import contract_arrays
from fluxfill.inpaint.geometry import SIZE_MULTIPLE
from fluxfill.inpaint.service import FluxFillService
from fluxfill.inpaint.tiny import ensure_tiny_model

COVERAGES = (0.02, 0.10, 0.30, 0.60)
QUICK_COVERAGES = (0.10,)
STEPS = 4


def tokens(width: float, height: float) -> int:
    """Latent tokens of a working size: the 8x VAE and FLUX's 2x2 packing make one token per 16x16 pixels."""
    return round(width / SIZE_MULTIPLE) * round(height / SIZE_MULTIPLE)


def measure(
    coverage: float, photo: npt.NDArray[np.uint8], services: dict[bool, FluxFillService], rounds: int
) -> dict[str, float | str]:
    """One row's figures for a mask coverage."""
    mask = blob_mask(coverage)
    config = services[True].config
    crop, full = engine_plan(mask, config, True), engine_plan(mask, config, False)
    density = crop.working_width / crop.box.width
    arrays = contract_arrays(photo, mask, "a cat", steps=STEPS, seed=3)
    times = interleaved(
        {"crop": lambda: services[True].run(arrays), "full": lambda: services[False].run(arrays)},
        rounds,
        # The services warmed up at load: a quick run skips the untimed round (12 MP calls take seconds).
        warmup=0 if rounds == 1 else 1,
    )
    width, height = UPRIGHT_SIZE
    return {
        "coverage": f"{coverage:.0%}",
        "crop box": f"{crop.box.width}x{crop.box.height}",
        "crop working": f"{crop.working_width}x{crop.working_height}",
        "crop tokens": tokens(crop.working_width, crop.working_height),
        "same-density tokens": tokens(width * density, height * density),
        "capped working": f"{full.working_width}x{full.working_height}",
        "capped tokens": tokens(full.working_width, full.working_height),
        "capped density": (full.working_width / width) / density,
        "crop ms": median_ms(times["crop"]),
        "full ms": median_ms(times["full"]),
    }


def plot(results: list[dict[str, float | str]], plot_dir: Path) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    coverages = [float(str(r["coverage"]).rstrip("%")) for r in results]
    for key, label in (
        ("crop tokens", "crop to mask"),
        ("same-density tokens", "full frame, same density"),
        ("capped tokens", "full frame, capped at max_working_pixels"),
    ):
        axis.plot(coverages, [float(r[key]) for r in results], marker="o", label=label)
    axis.set_yscale("log")
    axis.set_xlabel("mask coverage of the 12 MP photo, %")
    axis.set_ylabel("latent tokens per step")
    axis.set_title("Tokens denoised: crop to mask vs full frame")
    axis.legend()
    save_plot(figure, plot_dir, "crop_to_mask")


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__).parse_args(argv)
    coverages, rounds = (QUICK_COVERAGES, 1) if args.quick else (COVERAGES, 3)
    tiny = ensure_tiny_model(TINY_MODEL_DIR)
    base = {**shipped_parameters(), "weights_dir": str(tiny.pipeline_dir), "warmup_steps": "1"}
    if args.quick:
        # A smaller working size keeps the smoke run to seconds; the token counts follow the parameters.
        base["max_working_pixels"] = base["min_working_pixels"]
    services = {
        crop: FluxFillService.load({**base, "crop_to_mask": str(crop).lower()}, "cpu")
        for crop in (True, False)
    }
    width, height = UPRIGHT_SIZE
    photo = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(photo_bytes()))).convert("RGB"))
    results = [measure(coverage, photo, services, rounds) for coverage in coverages]
    config = services[True].config
    headers = [
        "mask",
        "crop box",
        "working size",
        "tokens",
        "full frame, same density: tokens",
        "x more",
        "full frame capped: working size",
        "tokens",
        "its density vs crop",
        "tiny model ms: crop",
        "full frame capped",
        "ratio",
    ]
    rows = [
        [
            r["coverage"],
            r["crop box"],
            r["crop working"],
            r["crop tokens"],
            r["same-density tokens"],
            f"{float(r['same-density tokens']) / float(r['crop tokens']):.1f}x",
            r["capped working"],
            r["capped tokens"],
            f"{float(r['capped density']):.2f}x",
            f"{float(r['crop ms']):.0f}",
            f"{float(r['full ms']):.0f}",
            f"{float(r['full ms']) / float(r['crop ms']):.2f}x",
        ]
        for r in results
    ]
    notes = [
        f"photo {width}x{height} (the intake benchmark's JPEG), ellipse masks; shipped parameters "
        f"(working pixels {config.min_working_pixels}..{config.max_working_pixels}, margin "
        f"{config.crop_margin:g}); tiny model, {STEPS} steps, {rounds} interleaved rounds",
        "density = working pixels per input pixel along a side; tokens per step grow with density squared, "
        "attention cost with tokens squared",
    ]
    report("Crop to mask: tokens and time vs full frame (12 MP photo)", markdown_table(headers, rows), notes)
    plot(results, args.plot_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
