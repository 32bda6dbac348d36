"""Google credentials, resolved once per process (thread-safe): emulators, then ADC, then a key fallback."""

import base64
import binascii
import json
import os
import threading

import google.auth
import structlog
from google.auth.credentials import AnonymousCredentials, Credentials
from google.auth.exceptions import DefaultCredentialsError
from google.oauth2 import service_account

from fluxfill.bridge.settings import BridgeSettings

logger = structlog.get_logger(__name__)
EMULATOR_VARIABLES = ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "STORAGE_EMULATOR_HOST")
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)

_lock = threading.Lock()
_resolved: Credentials | None = None


class CredentialsError(RuntimeError):
    """No usable credentials: the message says what was tried."""


def using_emulators() -> bool:
    """Whether any *_EMULATOR_HOST variable is set (local use and tests)."""
    return any(os.environ.get(name) for name in EMULATOR_VARIABLES)


def google_credentials(settings: BridgeSettings) -> Credentials:
    """The process's credentials; the first call decides, later calls (from any thread) reuse them."""
    global _resolved  # noqa: PLW0603 (one resolution per process, guarded by the lock)
    with _lock:
        if _resolved is None:
            _resolved = resolve_credentials(settings)
        return _resolved


def resolve_credentials(settings: BridgeSettings) -> Credentials:
    """Decide afresh, without the process cache: emulators, then ADC, then the base64 key."""
    if using_emulators():
        logger.info("emulators configured: anonymous credentials")
        return AnonymousCredentials()  # type: ignore[no-untyped-call]
    try:
        credentials, _project = google.auth.default(scopes=SCOPES)
        logger.info("using Application Default Credentials", kind=type(credentials).__name__)
        return credentials
    except DefaultCredentialsError as error:
        if settings.service_account_key_b64 is None:
            raise CredentialsError(
                f"no Application Default Credentials ({error}); use Workload Identity or "
                "GOOGLE_APPLICATION_CREDENTIALS, or as a last resort FLUXFILL_BRIDGE_SERVICE_ACCOUNT_KEY_B64"
            ) from None
    logger.warning(
        "no Application Default Credentials: falling back to the base64 service-account key; "
        "prefer Workload Identity, which needs no key"
    )
    try:
        info = json.loads(
            base64.b64decode(settings.service_account_key_b64.get_secret_value(), validate=True)
        )
        return service_account.Credentials.from_service_account_info(info, scopes=SCOPES)  # type: ignore[no-any-return,no-untyped-call]
    except (binascii.Error, ValueError, KeyError) as error:
        # The error's text could quote the key: only its type is reported.
        raise CredentialsError(
            "FLUXFILL_BRIDGE_SERVICE_ACCOUNT_KEY_B64 is not a base64 service-account key "
            f"({type(error).__name__})"
        ) from None
