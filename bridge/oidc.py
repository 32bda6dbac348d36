"""Verify the OIDC token Pub/Sub push attaches: Google's signature, expiry, audience and service account."""

import json
import threading
import time
import urllib.request
from collections.abc import Mapping
from typing import Any

from google.auth import exceptions as auth_exceptions
from google.auth import jwt

GOOGLE_ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})


class PushAuthError(Exception):
    """The push request is refused: `status` 401 (no valid token) or 403 (valid, but not ours)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class CertificatesUnavailableError(Exception):
    """Google's signing certificates could not be fetched: answer 503 so that Pub/Sub retries."""


class PushTokenVerifier:
    """Checks `Authorization: Bearer <jwt>` against certificates fetched from `certs_url` (cached)."""

    def __init__(self, audience: str, service_account: str, certs_url: str, cache_s: float = 300.0) -> None:
        self._audience = audience
        self._service_account = service_account
        self._certs_url = certs_url
        self._cache_s = cache_s
        self._lock = threading.Lock()
        self._certs: Mapping[str, str] = {}
        self._fetched_at = float("-inf")

    def _certificates(self, refresh: bool = False) -> Mapping[str, str]:
        with self._lock:
            if refresh or time.monotonic() - self._fetched_at > self._cache_s:
                try:
                    with urllib.request.urlopen(self._certs_url, timeout=10) as response:  # noqa: S310 (configured URL)
                        self._certs = json.loads(response.read())
                except (OSError, ValueError) as error:
                    raise CertificatesUnavailableError(f"cannot fetch {self._certs_url}: {error}") from None
                self._fetched_at = time.monotonic()
            return self._certs

    def verify(self, authorization: str | None) -> Mapping[str, Any]:
        """The token's claims; raises PushAuthError with 401 or 403."""
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
            # A key id we have not seen: Google rotated its keys since the last fetch.
            return _decode(token, self._certificates(refresh=True))


def _decode(token: str, certs: Mapping[str, str]) -> Mapping[str, Any]:
    # audience=None: the audience is checked by the caller, so a wrong one is a 403, not a 401.
    claims: Mapping[str, Any] = jwt.decode(token, certs=certs, audience=None)  # type: ignore[no-untyped-call]
    return claims
