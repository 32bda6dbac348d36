"""`make demo`: real end-to-end inpaints of demo/chelsea.png.

First straight to tritonserver over gRPC, then the app's whole path: Storage upload, session document and
Pub/Sub job (local emulators), the bridge, Triton, and the results read back from Storage.
"""

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

# Python puts this script's folder first on sys.path, so the sibling module imports directly.
from job_path import run_job

from fluxfill.client.errors import FluxFillError
from fluxfill.client.images import load_mask, load_rgb, save_rgb
from fluxfill.client.inference import FluxFillClient
from fluxfill.client.local_server import LocalServerError, LocalTritonServer
from fluxfill.client.prerequisites import emulator_problems, require, triton_problems
from fluxfill.inpaint.contract import MODEL_NAME, STREAM_MODEL_NAME
from fluxfill.inpaint.tiny import ensure_tiny_model

DEMO_DIR = Path(__file__).resolve().parent
REPOSITORY = DEMO_DIR.parent / "model_repository"
PROMPT = "a green cat eye, sharp, detailed fur"


def main() -> int:
    """Run the demo; a failure is one line on stderr and a non-zero exit."""
    try:
        return run()
    except (LocalServerError, FluxFillError) as error:
        sys.stderr.write(f"demo failed: {error}\n")
        return 1


def run() -> int:
    """Build or find weights, serve them, inpaint the demo photo over gRPC and write the result."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny-model", type=Path, default=Path("build/tiny-flux-fill"))
    parser.add_argument("--weights-dir", type=Path, help="real FLUX.1-Fill weights instead of the tiny model")
    parser.add_argument("--output", type=Path, default=Path("out/chelsea-inpainted.png"))
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Both halves need these: say what is missing now, not after the first half ran.
    require(triton_problems, emulator_problems)

    weights_dir = (args.weights_dir or ensure_tiny_model(args.tiny_model).pipeline_dir).resolve()
    image = load_rgb(DEMO_DIR / "chelsea.png")
    mask = load_mask(DEMO_DIR / "chelsea-mask.png")
    parameters = {STREAM_MODEL_NAME: {"weights_dir": str(weights_dir)}}
    required = [STREAM_MODEL_NAME, MODEL_NAME]
    with LocalTritonServer(REPOSITORY, parameters=parameters, required_models=required) as server:
        if args.weights_dir is None:
            logging.warning(
                "serving the TINY TEST MODEL: the repainted eye is noise; the rest is the original photo"
            )
        started = time.perf_counter()
        with FluxFillClient(server.grpc_url, "grpc") as client:
            result = client.inpaint(image, mask, PROMPT, seed=args.seed)
        elapsed = time.perf_counter() - started
        save_rgb(result.image, args.output)
        unchanged = float(np.mean(np.all(result.image == image, axis=2)))
        sys.stdout.write(
            f"wrote {args.output}: {result.image.shape[1]}x{result.image.shape[0]}, seed {result.seed}, "
            f"{elapsed:.1f} s over gRPC, {unchanged:.1%} of pixels untouched\n"
        )
        job = run_job(
            server.grpc_url,
            DEMO_DIR / "chelsea.png",
            DEMO_DIR / "chelsea-mask.png",
            prompt=PROMPT,
            seed=args.seed,
            out_dir=args.output.parent,
        )
    status = job.session.get("status")
    if job.edited is None:
        sys.stderr.write(f"demo failed: the job ended {status}: {job.session.get('error')}\n")
        return 1
    sys.stdout.write(
        f"job {status}: wrote {job.edited} and {job.preview} via Pub/Sub, the bridge and Triton\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
