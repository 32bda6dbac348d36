"""Verify the OIDC token Pub/Sub push attaches: Google's signature, expiry, audience and service account.

Certificates are cached for their HTTP cache lifetime (`Cache-Control: max-age`); a token with a key id we
do not know triggers a refetch at most once per REFETCH_INTERVAL_S (forged tokens cannot make the bridge fetch
in a loop), and a failed fetch is remembered for FAILURE_BACKOFF_S (no 10 s wait per request while Google is
unreachable). Expiry allows CLOCK_SKEW_S. The verifier blocks on the network: call it off the event loop.
"""

import json
import re
import threading
import time
import urllib.request
from collections.abc import Mapping
from typing import Any

from google.auth import exceptions as auth_exceptions
from google.auth import jwt

GOOGLE_ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})
FETCH_TIMEOUT_S = 5.0
DEFAULT_CACHE_S = 300.0
REFETCH_INTERVAL_S = 30.0
FAILURE_BACKOFF_S = 10.0
CLOCK_SKEW_S = 60


class PushAuthError(Exception):
    """The push request is refused: `status` 401 (no valid token) or 403 (valid, but not ours)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class CertificatesUnavailableError(Exception):
    """Google's signing certificates could not be fetched: answer 503 so that Pub/Sub retries."""


def max_age(cache_control: str | None, default: float) -> float:
    """Seconds from a Cache-Control header's max-age; `default` when it has none."""
    match = re.search(r"max-age=(\d+)", cache_control or "")
    return float(match.group(1)) if match else default


class PushTokenVerifier:
    """Checks `Authorization: Bearer <jwt>` against certificates fetched from `certs_url` (cached)."""

    def __init__(
        self,
        audience: str,
        service_account: str,
        certs_url: str,
        cache_s: float = DEFAULT_CACHE_S,
        clock: Any = time.monotonic,
    ) -> None:
        self._audience = audience
        self._service_account = service_account
        self._certs_url = certs_url
        self._default_cache_s = cache_s
        self._clock = clock
        self._lock = threading.Lock()
        self._certs: Mapping[str, str] = {}
        self._expires_at = float("-inf")
        self._fetched_at = float("-inf")
        self._failed_at = float("-inf")
        self._failure = ""
        self.fetches = 0

    def _fetch(self) -> None:
        now = self._clock()
        if now - self._failed_at < FAILURE_BACKOFF_S:
            raise CertificatesUnavailableError(self._failure)
        self.fetches += 1
        try:
            with urllib.request.urlopen(self._certs_url, timeout=FETCH_TIMEOUT_S) as response:  # noqa: S310 (configured URL)
                certs = json.loads(response.read())
                lifetime = max_age(response.headers.get("Cache-Control"), self._default_cache_s)
            if not isinstance(certs, dict):
                raise ValueError("the certificates are not a JSON object")
        except (OSError, ValueError) as error:
            self._failed_at = self._clock()
            self._failure = f"cannot fetch {self._certs_url}: {error}"
            raise CertificatesUnavailableError(self._failure) from None
        self._certs = certs
        self._fetched_at = self._clock()
        self._expires_at = self._fetched_at + lifetime

    def _certificates(self, unknown_key: bool = False) -> Mapping[str, str]:
        with self._lock:
            now = self._clock()
            if now >= self._expires_at or (unknown_key and now - self._fetched_at >= REFETCH_INTERVAL_S):
                self._fetch()
            return self._certs

    def verify(self, authorization: str | None) -> Mapping[str, Any]:
        """The token's claims; raises PushAuthError with 401 or 403, CertificatesUnavailableError."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise PushAuthError(401, "missing bearer token")
        try:
            claims = self._decode(token)
        except (ValueError, auth_exceptions.GoogleAuthError) as error:
            raise PushAuthError(401, f"invalid token: {error}") from None
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise PushAuthError(401, f"token not issued by Google: {claims.get('iss')!r}")
        if claims.get("aud") != self._audience:
            raise PushAuthError(403, f"token audience {claims.get('aud')!r} is not {self._audience!r}")
        if claims.get("email") != self._service_account or claims.get("email_verified") is not True:
            raise PushAuthError(403, f"token service account {claims.get('email')!r} is not the expected one")
        return claims

    def _decode(self, token: str) -> Mapping[str, Any]:
        try:
            return _decode(token, self._certificates())
        except ValueError as error:
            if "Certificate for key id" not in str(error):
                raise
            # A key id we have not seen: Google may have rotated its keys (refetched at most every 30 s).
            return _decode(token, self._certificates(unknown_key=True))


def _decode(token: str, certs: Mapping[str, str]) -> Mapping[str, Any]:
    # audience=None: the audience is checked by the caller, so a wrong one is a 403, not a 401.
    claims: Mapping[str, Any] = jwt.decode(  # type: ignore[no-untyped-call]
        token, certs=certs, audience=None, clock_skew_in_seconds=CLOCK_SKEW_S
    )
    return claims
