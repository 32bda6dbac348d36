"""`fluxfill infer`: inpaint one photo through a running server, with a progress bar and Ctrl-C to cancel."""

import argparse
import http.client
import io
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from PIL import Image

from fluxfill.client.cli_jobs import finite_number
from fluxfill.client.errors import (
    EXIT_OK,
    NOT_GRPC,
    CancelledError,
    InvalidInputError,
    ServiceUnavailableError,
)
from fluxfill.client.images import (
    MaskLike,
    checked_mask,
    load_photo,
    mask_argument,
    save_rgb,
)
from fluxfill.client.inference import DEFAULT_PORTS, FluxFillClient, checked_url
from fluxfill.client.prerequisites import require_writable_folder
from fluxfill.client.progress import ProgressBar
from fluxfill.client.retry import RetryPolicy


def add_parser(commands: "argparse._SubParsersAction[Any]") -> None:
    """Register `infer` and its options."""
    infer = commands.add_parser(
        "infer",
        help="inpaint IMAGE where MASK says, through a running server",
        description="Inpaint IMAGE where MASK says and write the result to OUTPUT. Over gRPC (the default) "
        "a progress bar shows each denoising step and Ctrl-C cancels the run on the server. Exit codes: "
        "0 done, 2 invalid input, 3 service unavailable, 4 cancelled or timed out.",
    )
    infer.add_argument("image", type=Path, help="the photo (any format PIL reads)")
    infer.add_argument(
        "mask",
        help="what to repaint: a mask image (white = repaint), an RGBA image (transparent = repaint), "
        "or a box x,y,w,h in pixels",
    )
    infer.add_argument("--prompt", default="", help="what to paint (default: the model's default prompt)")
    infer.add_argument(
        "--output", type=Path, required=True, help="where to write the result (.png, .jpg, ...)"
    )
    infer.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    infer.add_argument("--guidance", type=finite_number, help="guidance scale (default: the model's)")
    infer.add_argument("--seed", type=int, help="seed for a reproducible result (default: random, printed)")
    infer.add_argument("--timeout", type=finite_number, help="give up after this many seconds (exit 4)")
    infer.add_argument(
        "--retries", type=int, default=3, help="retries, with backoff, while the server is unavailable"
    )
    infer.add_argument("--url", help="HOST:PORT (default localhost:8001 for grpc, localhost:8000 for http)")
    infer.add_argument(
        "--protocol", choices=("grpc", "http"), default="grpc", help="grpc streams progress; http does not"
    )


def _output_path(path: Path) -> Path:
    """The output, checked before the run: a typo in the suffix, a format Pillow reads but cannot write (PSD)
    or not in colour (XBM), or a folder that cannot be written wasted a whole inference before its error (an
    "unexpected error" and a log file for some)."""
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise InvalidInputError(f"{path}: unknown image format {path.suffix!r} (use .png, .jpg, .webp, ...)")
    try:
        Image.new("RGB", (1, 1)).save(io.BytesIO(), format=fmt)
    except (OSError, ValueError, KeyError):
        raise InvalidInputError(
            f"{path}: {path.suffix} ({fmt}) is not a format a colour photo can be written in here "
            "(use .png, .jpg, .webp, ...)"
        ) from None
    if path.is_dir():
        raise InvalidInputError(f"{path}: is a directory")
    require_writable_folder(path.parent, str(path))
    return path


def _with_protocol_hint(error: ServiceUnavailableError, url: str, protocol: str) -> ServiceUnavailableError:
    """The error, with a hint when a gRPC call reached a server that answers HTTP/1 (Triton's HTTP port).

    Triton's HTTP port closes a gRPC connection without a word ("Socket closed"); one HTTP request tells.
    """
    if protocol != "grpc" or NOT_GRPC in str(error):
        return error
    try:
        with urllib.request.urlopen(f"http://{url}/v2/health/live", timeout=1.0):
            pass
    except urllib.error.HTTPError:
        pass  # an HTTP answer all the same
    except (OSError, ValueError, http.client.HTTPException):
        return error
    return ServiceUnavailableError(f"{url} {NOT_GRPC}")


def run(args: argparse.Namespace) -> int:
    """Inpaint, write the output and print it with the seed."""
    output = _output_path(args.output)
    if args.retries < 0:
        raise InvalidInputError(f"--retries must be 0 or more, got {args.retries}")
    if args.timeout is not None and args.timeout <= 0:
        raise InvalidInputError(f"--timeout must be positive, got {args.timeout:g}")
    url = checked_url(args.url or f"localhost:{DEFAULT_PORTS[args.protocol]}")
    photo = load_photo(args.image)
    mask_arg: MaskLike = mask_argument(args.mask)
    mask = checked_mask(mask_arg, photo.rgb.shape[0], photo.rgb.shape[1], "infer")
    progress = ProgressBar(sys.stderr)
    try:
        with FluxFillClient(url, args.protocol, retry=RetryPolicy(retries=args.retries)) as client:
            result = client.inpaint(
                photo.rgb,
                mask,
                args.prompt,
                steps=args.steps,
                guidance=args.guidance,
                seed=args.seed,
                timeout=args.timeout,
                on_progress=progress,
            )
    except ServiceUnavailableError as error:
        raise _with_protocol_hint(error, url, args.protocol) from None
    except KeyboardInterrupt:
        # Leaving the call cancelled its gRPC stream, and with it the run on the server.
        progress.interrupt()
        where = "the server stopped the run" if args.protocol == "grpc" else "HTTP cannot stop a started run"
        raise CancelledError(f"interrupted (Ctrl-C): cancelled; {where}") from None
    # The photo's transparency, colour profile and EXIF kept where the output's format holds them.
    save_rgb(result.image, output, photo)
    height, width = result.image.shape[:2]
    sys.stdout.write(f"wrote {output} ({width}x{height}, seed {result.seed})\n")
    return EXIT_OK
