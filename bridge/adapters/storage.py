"""The ObjectStore port over Cloud Storage: metadata first, generation-pinned reads, create-only writes."""

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
from google.api_core import exceptions as api
from google.auth.exceptions import TransportError
from google.cloud import storage  # type: ignore[attr-defined]
from google.cloud.storage.retry import DEFAULT_RETRY  # type: ignore[import-untyped]

from fluxfill.bridge.contract import RESULT_KEY_METADATA, ErrorCode
from fluxfill.bridge.errors import AmbiguousObjectError, PermanentJobError, StorageTransientError
from fluxfill.bridge.ports import ObjectInfo

# Google's client gives a request that gets no answer (a half-open connection, a network that drops packets)
# 60 s, retried for 120 s: a metadata read took 121 s here, each attempt of a job holding its slot that long
# before its transient failure gave the job back.
CALL_TIMEOUT_S = 30.0
# Objects a `*` pattern's listing names at most: two make it ambiguous, the rest are named in the error.
LISTED_AT_MOST = 10


def bounded(seconds: float | None = None) -> dict[str, Any]:
    """Keyword arguments that bound one Cloud Storage call, its retries included, to about `seconds` (default
    CALL_TIMEOUT_S; a transfer may take longer while its bytes keep coming: the bound is on silence)."""
    limit = CALL_TIMEOUT_S if seconds is None else seconds
    return {"timeout": limit, "retry": DEFAULT_RETRY.with_timeout(limit)}


@contextmanager
def storage_errors(action: str) -> Iterator[None]:
    """The boundary: every Cloud Storage failure we let through becomes a StorageTransientError."""
    try:
        yield
    except (api.GoogleAPICallError, api.RetryError) as error:
        # Permissions or configuration are not the job's fault: retried, then dead-lettered with this text.
        raise StorageTransientError(f"cloud storage failed to {action}: {error}") from None
    except (requests.RequestException, TransportError, OSError) as error:
        raise StorageTransientError(f"cannot reach cloud storage to {action}: {error}") from None


class CloudStorageObjects:
    """One bucket of a `google.cloud.storage.Client`."""

    def __init__(self, client: storage.Client, bucket: str) -> None:
        self._client = client
        self._bucket = client.bucket(bucket)

    def find(self, pattern: str) -> ObjectInfo | None:
        """The object at `pattern`, or the one object whose name continues a prefix ending in `*`."""
        if not pattern.endswith("*"):
            with storage_errors(f"read the metadata of {pattern}"):
                blob = self._bucket.get_blob(pattern, **bounded())
            return None if blob is None else _info(blob)
        # The delimiter leaves objects in folders out of the listing itself: filtered after a listing cut at
        # ten names, ten of them (`original.a/...`, named before `original.png`) hid the photo.
        with storage_errors(f"list {pattern}"):
            listing = self._client.list_blobs(self._bucket, prefix=pattern[:-1], delimiter="/", **bounded())
            blobs = list(itertools.islice(listing, LISTED_AT_MOST))
        if len(blobs) > 1:
            raise AmbiguousObjectError(pattern, [blob.name for blob in blobs])
        return _info(blobs[0]) if blobs else None

    def read(self, info: ObjectInfo) -> bytes:
        """The bytes of the generation whose size was checked, so a swapped object cannot slip in, as they are
        stored: never inflated beyond that size (a gzip-encoded object is served inflated otherwise)."""
        blob = self._bucket.blob(info.path, generation=info.generation)
        with storage_errors(f"download {info.path}"):
            try:
                return bytes(
                    blob.download_as_bytes(
                        if_generation_match=info.generation, raw_download=True, **bounded()
                    )
                )
            except (api.NotFound, api.PreconditionFailed):
                raise PermanentJobError(
                    ErrorCode.OBJECT_CHANGED, f"{info.path} was replaced or deleted while the job read it"
                ) from None

    def create(self, path: str, data: bytes, content_type: str, result_key: str | None = None) -> bool:
        """Upload only if no object exists there (if_generation_match=0); False when one does."""
        blob = self._bucket.blob(path)
        if result_key is not None:
            blob.metadata = {RESULT_KEY_METADATA: result_key}
        with storage_errors(f"upload {path}"):
            try:
                blob.upload_from_string(data, content_type=content_type, if_generation_match=0, **bounded())
            except api.PreconditionFailed:
                return False
        return True


def _info(blob: storage.Blob) -> ObjectInfo:
    return ObjectInfo(
        blob.name,
        int(blob.size or 0),
        int(blob.generation or 0),
        blob.content_type,
        blob.content_encoding,
        (blob.metadata or {}).get(RESULT_KEY_METADATA),
    )
