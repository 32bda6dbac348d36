"""The seed of a job that names none."""

import hashlib

from fluxfill.bridge.contract import JobMessage
from fluxfill.inpaint.contract import MAX_SEED


def default_seed(job: JobMessage) -> int:
    """A seed fixed by the session, so a retried job repaints exactly what an earlier attempt uploaded."""
    digest = hashlib.sha256(f"{job.userId}/{job.sessionId}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & MAX_SEED
