"""The `fluxfill` command line.

Exit codes: 0 done, 2 invalid input or usage, 3 service unavailable, 4 cancelled or timed out.
"""

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from fluxfill.client.errors import (
    EXIT_OK,
    EXIT_USAGE,
    FluxFillError,
    InvalidInputError,
    ServiceUnavailableError,
)

DEFAULT_TINY_DIR = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fluxfill" / "tiny-flux-fill"
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message}\n")


def _parameter(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    """Every command with its --help."""
    parser = _Parser(
        prog="fluxfill", description="FLUX.1-Fill inpainting on Triton: serve, call, build test weights."
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    tiny = commands.add_parser(
        "tiny-model", help="build the tiny random-weight test model (offline, idempotent)"
    )
    tiny.add_argument("--output", type=Path, default=DEFAULT_TINY_DIR, help="directory to build into")

    serve = commands.add_parser("serve", help="run tritonserver with the model repository until Ctrl-C")
    serve.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    serve.add_argument("--weights-dir", help="diffusers FLUX.1-Fill directory (default: the tiny test model)")
    serve.add_argument("--gguf-file", help="GGUF transformer file to use instead of the directory's")
    serve.add_argument(
        "--param",
        type=_parameter,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a flux_fill config.pbtxt parameter (repeatable)",
    )
    serve.add_argument("--tiny-model-dir", type=Path, default=DEFAULT_TINY_DIR)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for all)")
    for port, default in (("http", 8000), ("grpc", 8001), ("metrics", 8002)):
        serve.add_argument(f"--{port}-port", type=int, default=default)

    infer = commands.add_parser("infer", help="inpaint IMAGE where MASK is white, through a running server")
    infer.add_argument("image", type=Path)
    infer.add_argument(
        "mask", type=Path, help="mask image (white = repaint) or RGBA image (transparent = repaint)"
    )
    infer.add_argument("--prompt", default="")
    infer.add_argument("--output", type=Path, required=True)
    infer.add_argument("--steps", type=int)
    infer.add_argument("--guidance", type=float)
    infer.add_argument("--seed", type=int)
    infer.add_argument(
        "--url", default=None, help="HOST:PORT (default localhost:8001 for grpc, 8000 for http)"
    )
    infer.add_argument("--protocol", choices=("grpc", "http"), default="grpc")

    digest = commands.add_parser(
        "weights-digest", help="print the sha256 that the weights_sha256 parameter expects"
    )
    digest.add_argument("path", type=Path, help="a GGUF file or a diffusers weights directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; errors are one line on stderr and an exit code, never a traceback."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except FluxFillError as error:
        sys.stderr.write(f"fluxfill {args.command}: {error}\n")
        return error.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"fluxfill {args.command}: interrupted\n")
        return 130


def _run(args: argparse.Namespace) -> int:
    if args.command == "tiny-model":
        from fluxfill.inpaint.tiny import ensure_tiny_model

        model = ensure_tiny_model(args.output)
        sys.stdout.write(f"pipeline: {model.pipeline_dir}\ngguf: {model.gguf_file}\n")
        return EXIT_OK
    if args.command == "serve":
        from fluxfill.client.serve import serve

        return serve(args)
    if args.command == "infer":
        return _infer(args)
    if args.command == "weights-digest":
        from fluxfill.inpaint.weights import directory_digest, file_sha256

        if not args.path.exists():
            raise InvalidInputError(f"{args.path}: no such file or directory")
        digest = directory_digest(args.path) if args.path.is_dir() else file_sha256(args.path)
        sys.stdout.write(f"{digest}\n")
        return EXIT_OK
    raise AssertionError(args.command)


def _infer(args: argparse.Namespace) -> int:
    from fluxfill.client.images import load_mask, load_rgb, save_rgb
    from fluxfill.client.inference import FluxFillClient

    image, mask = load_rgb(args.image), load_mask(args.mask)
    if image.shape[:2] != mask.shape:
        raise InvalidInputError(
            f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image.shape[1]}x{image.shape[0]}"
        )
    url = args.url or ("localhost:8001" if args.protocol == "grpc" else "localhost:8000")
    try:
        with FluxFillClient(url, args.protocol) as client:
            result = client.inpaint(
                image, mask, args.prompt, steps=args.steps, guidance=args.guidance, seed=args.seed
            )
    except ConnectionError as error:
        raise ServiceUnavailableError(f"cannot reach {url}: {error}") from None
    save_rgb(result.image, args.output)
    sys.stdout.write(f"wrote {args.output} (seed {result.seed})\n")
    return EXIT_OK
