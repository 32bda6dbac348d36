"""`python -m fluxfill.bridge`: run the bridge configured by FLUXFILL_BRIDGE_* variables."""

import argparse
import os
import signal
import sys
import textwrap
from collections.abc import Sequence

import structlog
from pydantic import ValidationError

from fluxfill.bridge.bootstrap import build_bridge
from fluxfill.bridge.credentials import CredentialsError
from fluxfill.bridge.logs import configure_logging
from fluxfill.bridge.service import BridgeService
from fluxfill.bridge.settings import BridgeSettings, environment_problems, setting_rows, settings_problems

logger = structlog.get_logger("fluxfill.bridge")


def _parser() -> argparse.ArgumentParser:
    settings = "\n".join(
        f"  {name} {default if default.startswith('(') else f'(default {default})'}\n"
        + textwrap.fill(meaning, 100, initial_indent=" " * 6, subsequent_indent=" " * 6)
        for name, default, meaning in setting_rows()
    )
    return argparse.ArgumentParser(
        prog="python -m fluxfill.bridge",
        description="The Pub/Sub -> Cloud Storage -> Triton -> Firestore bridge. It takes no arguments: "
        "every setting comes from an environment variable. Exit 2 on invalid or unknown settings or no "
        "credentials.",
        epilog=f"environment variables:\n{settings}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run until SIGTERM or SIGINT; exit 2 on invalid or unknown settings or missing credentials."""
    _parser().parse_args(argv)
    problems = environment_problems(os.environ)
    try:
        settings = BridgeSettings()  # type: ignore[call-arg]
    except ValidationError as error:
        problems.append(settings_problems(error))
    if problems:
        configure_logging()
        logger.error("invalid settings", problems="; ".join(problems))
        return 2
    configure_logging(settings.log_level)
    try:
        service = BridgeService(build_bridge(settings))
    except CredentialsError as error:
        logger.error("no credentials", reason=str(error))
        return 2
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: service.request_stop())
    service.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
