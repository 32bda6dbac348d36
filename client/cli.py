"""The `fluxfill` command line.

Exit codes: 0 done, 1 an unexpected failure (one line, the details in a log file), 2 invalid input or usage,
3 service unavailable, 4 cancelled or timed out. Nothing reaches the terminal as a traceback.
"""

import argparse
import logging
import os
import re
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

from PIL import Image

from fluxfill.client import cli_infer, cli_jobs
from fluxfill.client.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_STOPPED,
    EXIT_USAGE,
    FluxFillError,
    InvalidInputError,
)

CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fluxfill"
DEFAULT_TINY_DIR = CACHE_DIR / "tiny-flux-fill"
# Where an unexpected failure's traceback goes (the terminal gets one line naming the file).
ERROR_LOG_DIR = CACHE_DIR / "errors"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless it has none worth showing (None, empty, False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, "", False, []) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        # A box with a negative number in it (-5,0,10,10) is an argument, as a bare negative number is: taken
        # for an unknown option, it made `infer` say "the following arguments are required: mask" instead of
        # what is wrong with the box. (Python 3.12's own pattern takes it too.)
        self._negative_number_matcher = re.compile(r"^-\d+(\.\d+)?(,-?\d+(\.\d+)?)*$")

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parameter(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


JOB_COMMANDS = ("submit", "watch", "cancel", "fetch", "dlq", "config")


def _version() -> str:
    try:
        return metadata.version("fluxfill")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """The weights and model parameters of `serve` and `stack`."""
    parser.add_argument(
        "--weights-dir", help="diffusers FLUX.1-Fill directory (default: the tiny test model)"
    )
    parser.add_argument("--gguf-file", help="GGUF transformer file to use instead of the directory's")
    parser.add_argument(
        "--param",
        type=_parameter,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a flux_fill_stream config.pbtxt parameter (repeatable)",
    )
    parser.add_argument(
        "--tiny-model-dir", type=Path, default=DEFAULT_TINY_DIR, help="where the tiny test model is built"
    )


def build_parser() -> argparse.ArgumentParser:
    """Every command with its --help."""
    parser = _Parser(
        prog="fluxfill",
        description="FLUX.1-Fill inpainting on Triton: inpaint a photo, serve the model, run the job path "
        "locally, and act on the job system as the app does. `fluxfill COMMAND --help` for each command.",
        epilog="exit codes: 0 done, 1 unexpected failure (details in a log file), 2 invalid input or usage, "
        "3 service unavailable, 4 cancelled or timed out",
    )
    parser.add_argument("--version", action="version", version=f"fluxfill {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    cli_infer.add_parser(commands)

    serve = commands.add_parser(
        "serve",
        help="run tritonserver with the model repository until Ctrl-C",
        description="Serve flux_fill and flux_fill_stream with a local tritonserver until Ctrl-C or SIGTERM; "
        "without --weights-dir, the tiny test model (its output is noise). Exit 2 when a port is taken or "
        "the weights are incomplete (checked before starting), 3 if a model cannot load.",
    )
    serve.add_argument(
        "--model-repository",
        type=Path,
        help="the repository to serve (default: the one shipped with this package)",
    )
    _add_model_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for all)")
    for port, default in (("http", 8000), ("grpc", 8001), ("metrics", 8002)):
        serve.add_argument(f"--{port}-port", type=int, default=default, help=f"{port} port")

    from fluxfill.client.stack import add_port_options

    stack = commands.add_parser(
        "stack",
        help="run the whole job path locally (emulators, Triton, a bridge) until Ctrl-C",
        description="Start the Pub/Sub and Firestore emulators, fake-gcs-server, tritonserver and a bridge; "
        "create the bucket, topics and subscriptions; print the export lines for submit/watch/fetch/dlq; "
        "stop everything on Ctrl-C. Needs Java and the Google Cloud SDK's emulators (see the README).",
    )
    _add_model_options(stack)
    add_port_options(stack)

    cli_jobs.add_parsers(commands)

    tiny = commands.add_parser(
        "tiny-model",
        help="build the tiny random-weight test model (offline, idempotent)",
        description="Build the tiny random-weight FluxFillPipeline the tests, the demo and `serve` without "
        "--weights-dir use: a diffusers directory and a Q8_0 GGUF transformer, built offline by our own "
        "code. Its output is noise; it proves the path, not the quality. Does nothing when already built.",
    )
    tiny.add_argument("--output", type=Path, default=DEFAULT_TINY_DIR, help="directory to build into")

    digest = commands.add_parser(
        "weights-digest",
        help="print the sha256 that the weights_sha256 parameter expects",
        description="Print the sha256 the model's weights_sha256 parameter is compared with: of a GGUF file, "
        "or over every weight file of a diffusers directory (path and content). Fails for a directory "
        "without weight files.",
    )
    digest.add_argument("path", type=Path, help="a GGUF file or a diffusers weights directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; errors are one line on stderr and an exit code, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    lines = logging.StreamHandler()
    lines.setFormatter(_CommandLines(args.command))
    logging.basicConfig(level=logging.INFO, handlers=[lines])
    # The commands open the user's own photos: Pillow's limit for untrusted images (a phone's 200 MP
    # photo is a "decompression bomb" to it, and one over 89 MP a two-line warning) gives way to
    # open_image's ceiling and the server's own limit.
    Image.MAX_IMAGE_PIXELS = None
    with warnings.catch_warnings():
        # A library's warning (Pillow's on a photo's corrupt EXIF) is one line of this command's too, not two
        # naming the library's source file.
        warnings.showwarning = _warning_line(args.command)
        return _main(args, argv)


class _CommandLines(logging.Formatter):
    """Our own log lines as the command's, one line each: `fluxfill COMMAND: what it did`, and a warning
    `fluxfill COMMAND: warning: ...` as a library's warnings are (a retry's was `WARNING
    fluxfill.client.retry: ...`)."""

    def __init__(self, command: str) -> None:
        super().__init__()
        self._command = command

    def format(self, record: logging.LogRecord) -> str:
        kind = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        return _line(self._command, kind + record.getMessage())


def _warning_line(command: str) -> Callable[..., None]:
    def show(message: Warning | str, *_: object, **__: object) -> None:
        sys.stderr.write(_line(command, f"warning: {message}") + "\n")

    return show


def _line(command: str, text: str) -> str:
    """`fluxfill COMMAND: text` on one line, whatever lines and spaces the text held."""
    return f"fluxfill {command}: {' '.join(text.split())}"


def _main(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    try:
        return _run(args)
    except FluxFillError as error:
        # One line, whatever the server's message held.
        sys.stderr.write(_line(args.command, str(error)) + "\n")
        return error.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(_line(args.command, "interrupted (Ctrl-C)") + "\n")
        return EXIT_STOPPED
    except Exception as error:  # the catch-all: whatever we did not foresee is one line and a log file
        where = _write_error_log(args.command, argv)
        message = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        sys.stderr.write(f"fluxfill {args.command}: unexpected error: {message} (details in {where})\n")
        return EXIT_FAILED


def _write_error_log(command: str, argv: Sequence[str] | None) -> str:
    """The traceback being handled, in a file of its own; its path (or why there is none)."""
    try:
        ERROR_LOG_DIR.mkdir(parents=True, exist_ok=True)
        path = ERROR_LOG_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{command}.log"
        arguments = " ".join(sys.argv[1:] if argv is None else argv)
        path.write_text(f"fluxfill {_version()}: fluxfill {arguments}\n\n{traceback.format_exc()}")
        return str(path)
    except OSError as error:
        return f"no log: {error}"


def _run(args: argparse.Namespace) -> int:
    if args.command == "tiny-model":
        try:
            # Before torch is imported (seconds): a folder that cannot be made is told at once.
            args.output.mkdir(parents=True, exist_ok=True)
            from fluxfill.inpaint.tiny import ensure_tiny_model

            model = ensure_tiny_model(args.output)
        except OSError as error:
            raise InvalidInputError(f"cannot build into {args.output}: {error.strerror or error}") from None
        sys.stdout.write(f"pipeline: {model.pipeline_dir}\ngguf: {model.gguf_file}\n")
        return EXIT_OK
    if args.command == "serve":
        from fluxfill.client.serve import serve

        return serve(args)
    if args.command == "stack":
        from fluxfill.client import stack
        from fluxfill.client.serve import default_model_repository, flux_fill_parameters

        return stack.run(args, lambda: flux_fill_parameters(args), default_model_repository())
    if args.command == "infer":
        return cli_infer.run(args)
    if args.command in JOB_COMMANDS:
        return cli_jobs.run(args)
    if args.command == "weights-digest":
        return _weights_digest(args.path)
    raise AssertionError(args.command)


def _weights_digest(path: Path) -> int:
    from fluxfill.inpaint.weights import WEIGHT_SUFFIXES, directory_digest, file_sha256, weight_files

    if not path.exists():
        raise InvalidInputError(f"{path}: no such file or directory")
    if not path.is_dir() and not path.is_file():
        # A device or a pipe: /dev/zero was read for good.
        raise InvalidInputError(f"{path}: neither a weights file nor a directory")
    if path.is_dir() and not weight_files(path):
        suffixes = ", ".join(WEIGHT_SUFFIXES)
        raise InvalidInputError(f"{path}: no weight files ({suffixes}) in this directory")
    try:
        digest = directory_digest(path) if path.is_dir() else file_sha256(path)
    except OSError as error:
        raise InvalidInputError(f"{path}: cannot be read ({error.strerror or error})") from None
    sys.stdout.write(f"{digest}\n")
    return EXIT_OK
