"""`fluxfill serve`: run tritonserver with the model repository in the foreground until Ctrl-C or SIGTERM."""

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

from fluxfill.client.errors import EXIT_OK, EXIT_UNAVAILABLE, InvalidInputError
from fluxfill.client.local_server import LocalServerError, LocalTritonServer, ModelUnavailableError
from fluxfill.client.prerequisites import require, require_free_ports, triton_problems
from fluxfill.inpaint.contract import MODEL_NAME, STREAM_MODEL_NAME

logger = logging.getLogger(__name__)


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def default_model_repository() -> Path:
    """The model repository shipped with the package: the checkout's, or the wheel's copy beside client/."""
    return Path(__file__).resolve().parents[1] / "model_repository"


def check_weights_arguments(args: argparse.Namespace) -> None:
    """Refuse, in milliseconds and before any server starts, weights that cannot load."""
    from fluxfill.inpaint.weights import directory_problem

    if args.gguf_file and not Path(args.gguf_file).is_file():
        what = "not a file" if Path(args.gguf_file).exists() else "no such file"
        raise InvalidInputError(f"--gguf-file {args.gguf_file}: {what}")
    if args.weights_dir:
        problem = directory_problem(Path(args.weights_dir), transformer_elsewhere=bool(args.gguf_file))
        if problem is not None:
            raise InvalidInputError(f"--weights-dir: {problem}")


def flux_fill_parameters(args: argparse.Namespace) -> dict[str, str]:
    """The parameter overrides for flux_fill_stream; without --weights-dir, the tiny test model."""
    check_weights_arguments(args)
    parameters = dict(args.param)
    if args.weights_dir:
        parameters["weights_dir"] = str(Path(args.weights_dir).resolve())
    elif "weights_dir" not in parameters:
        from fluxfill.inpaint.tiny import ensure_tiny_model

        tiny = ensure_tiny_model(args.tiny_model_dir)
        parameters["weights_dir"] = str(tiny.pipeline_dir.resolve())
        logger.warning(
            "no --weights-dir given: serving the TINY TEST MODEL (random weights, output is noise)"
        )
    if args.gguf_file:
        parameters["gguf_file"] = str(Path(args.gguf_file).resolve())
    return parameters


def serve(args: argparse.Namespace) -> int:
    """Start, report the endpoints, and stay in the foreground; exit 3 if the model cannot load."""
    repository = args.model_repository or default_model_repository()
    if not (repository / STREAM_MODEL_NAME / "config.pbtxt").is_file():
        raise InvalidInputError(f"--model-repository {repository}: no {STREAM_MODEL_NAME}/config.pbtxt there")
    check_weights_arguments(args)
    ports = {"http": args.http_port, "grpc": args.grpc_port, "metrics": args.metrics_port}
    require_free_ports(args.host, ports)
    require(triton_problems)
    parameters = flux_fill_parameters(args)
    server = LocalTritonServer(
        repository,
        parameters={STREAM_MODEL_NAME: parameters},
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        required_models=[STREAM_MODEL_NAME, MODEL_NAME],
        supervised=True,  # a model whose stub died ends the server (and serve, with the reason): no zombie
    )
    # The server runs in its own process group, so Ctrl-C reaches only us: stop it ourselves.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        server.start()
        endpoints = f"grpc {server.grpc_url}  http {server.http_url}  metrics {server.metrics_url}"
        sys.stdout.write(f"{MODEL_NAME} and {STREAM_MODEL_NAME} READY  {endpoints}\n")
        sys.stdout.flush()
        code = server.wait()
        sys.stderr.write(f"fluxfill serve: tritonserver exited with code {code}\n{server.log_text(20)}\n")
        return EXIT_UNAVAILABLE
    except ModelUnavailableError as error:
        sys.stderr.write(f"fluxfill serve: {error.model} failed to load: {error.reason}\n")
        return EXIT_UNAVAILABLE
    except LocalServerError as error:
        sys.stderr.write(f"fluxfill serve: {error}\n")
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        server.stop()
