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

from fluxfill.client import cli_infer, cli_jobs
from fluxfill.client.errors import EXIT_OK, EXIT_STOPPED, EXIT_USAGE, FluxFillError, InvalidInputError

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


JOB_COMMANDS = ("submit", "watch", "cancel", "dlq")


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

    serve = commands.add_parser(
        "serve",
        help="run tritonserver with the model repository until Ctrl-C",
        description="Serve flux_fill and flux_fill_stream with a local tritonserver until Ctrl-C or SIGTERM; "
        "without --weights-dir, the tiny test model (its output is noise). Exit 3 if a model cannot load.",
    )
    serve.add_argument(
        "--model-repository", type=Path, default=Path("model_repository"), help="the repository to serve"
    )
    serve.add_argument("--weights-dir", help="diffusers FLUX.1-Fill directory (default: the tiny test model)")
    serve.add_argument("--gguf-file", help="GGUF transformer file to use instead of the directory's")
    serve.add_argument(
        "--param",
        type=_parameter,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a flux_fill_stream config.pbtxt parameter (repeatable)",
    )
    serve.add_argument(
        "--tiny-model-dir", type=Path, default=DEFAULT_TINY_DIR, help="where the tiny test model is built"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for all)")
    for port, default in (("http", 8000), ("grpc", 8001), ("metrics", 8002)):
        serve.add_argument(f"--{port}-port", type=int, default=default, help=f"{port} port")

    cli_infer.add_parser(commands)
    cli_jobs.add_parsers(commands)

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
        # One line, whatever the server's message held.
        message = " ".join(str(error).split())
        sys.stderr.write(f"fluxfill {args.command}: {message}\n")
        return error.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"fluxfill {args.command}: interrupted (Ctrl-C)\n")
        return EXIT_STOPPED


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
        return cli_infer.run(args)
    if args.command in JOB_COMMANDS:
        return cli_jobs.run(args)
    if args.command == "weights-digest":
        from fluxfill.inpaint.weights import directory_digest, file_sha256

        if not args.path.exists():
            raise InvalidInputError(f"{args.path}: no such file or directory")
        digest = directory_digest(args.path) if args.path.is_dir() else file_sha256(args.path)
        sys.stdout.write(f"{digest}\n")
        return EXIT_OK
    raise AssertionError(args.command)
