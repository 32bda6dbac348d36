"""`python -m fluxfill.bridge`: run the bridge configured by FLUXFILL_BRIDGE_* variables."""

import signal
import sys

import structlog
from pydantic import ValidationError

from fluxfill.bridge.bootstrap import build_bridge
from fluxfill.bridge.credentials import CredentialsError
from fluxfill.bridge.logs import configure_logging
from fluxfill.bridge.service import BridgeService
from fluxfill.bridge.settings import BridgeSettings

logger = structlog.get_logger("fluxfill.bridge")


def main() -> int:
    """Run until SIGTERM or SIGINT; exit 2 on invalid settings or missing credentials."""
    try:
        settings = BridgeSettings()  # type: ignore[call-arg]
    except ValidationError as error:
        configure_logging()
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in error.errors()
        )
        logger.error("invalid settings", problems=problems)
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
