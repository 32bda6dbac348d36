"""Per-user fairness: at most `max_jobs_in_flight_per_user` jobs of one user run at once, fleet-wide.

One document per user (`{user_slots_collection}/{userId}`) maps each running claim's id to the time its slot
lapses. The Firestore adapter changes it by compare-and-set (fluxfill.bridge.adapters.user_slots_store), so
concurrent bridges agree on the count; a slot is renewed with the claim's lease (only when half of it is
spent: Firestore sustains about one write per second to a document, and a user's jobs share one) and lapses
with it, so a crashed bridge's slots free themselves. Pure functions of the document, like
fluxfill.bridge.sessions; `claim` and `heartbeat` compose them with the session's rules under one lock, as the
in-memory store of the unit tests applies them.
"""

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from fluxfill.bridge import sessions
from fluxfill.bridge.ports import Claim, ClaimKind, Heartbeat

CLAIMS = "claims"
SlotsDocument = Mapping[str, Any] | None


def live_claims(slots: SlotsDocument, now: datetime) -> dict[str, datetime]:
    """The claims whose slots have not lapsed."""
    claims = (slots or {}).get(CLAIMS)
    if not isinstance(claims, Mapping):
        return {}
    return {
        str(claim_id): expires
        for claim_id, expires in claims.items()
        if isinstance(expires, datetime) and expires > now
    }


def take(
    slots: SlotsDocument, claim_id: str, now: datetime, lease_s: float, limit: int
) -> dict[str, Any] | None:
    """The user's document with a slot for `claim_id`, or None when `limit` slots are live already.

    Lapsed slots are dropped in the same write, so the document stays as small as the limit.
    """
    claims = live_claims(slots, now)
    if claim_id not in claims and len(claims) >= limit:
        return None
    claims[claim_id] = now + timedelta(seconds=lease_s)
    return {CLAIMS: claims}


def renew(slots: SlotsDocument, claim_id: str, now: datetime, lease_s: float) -> dict[str, Any] | None:
    """The document with `claim_id`'s slot extended, once half its lease is spent; None: write nothing."""
    claims = live_claims(slots, now)
    expires = claims.get(claim_id)
    if expires is None or expires - now > timedelta(seconds=lease_s / 2):
        # A lapsed slot is not taken again here: the claim itself is then stale or about to be.
        return None
    claims[claim_id] = now + timedelta(seconds=lease_s)
    return {CLAIMS: claims}


def drop(slots: SlotsDocument, claim_id: str | None, now: datetime) -> dict[str, Any] | None:
    """The document without `claim_id`'s slot (and without lapsed ones); None when it holds no such slot."""
    stored = (slots or {}).get(CLAIMS)
    if claim_id is None or not isinstance(stored, Mapping) or claim_id not in stored:
        return None
    claims = live_claims(slots, now)
    claims.pop(claim_id, None)
    return {CLAIMS: claims}


def claim(
    document: sessions.Document | None,
    slots: SlotsDocument,
    *,
    limit: int,
    claim_id: str,
    now: datetime,
    lease_s: float,
    **rules: Any,
) -> tuple[Claim, sessions.Update | None, dict[str, Any] | None]:
    """sessions.claim, then a slot of the user's (limit 0: no limit); over the limit nothing is written.

    The job is then not claimed and no attempt is spent: it waits until one of the user's jobs ends.
    """
    result, update = sessions.claim(document, claim_id=claim_id, now=now, lease_s=lease_s, **rules)
    if result.kind is not ClaimKind.CLAIMED or limit <= 0:
        return result, update, None
    taken = take(slots, claim_id, now, lease_s, limit)
    if taken is None:
        running = len(live_claims(slots, now))
        return Claim(ClaimKind.USER_AT_LIMIT, result.attempt - 1, user_running=running), None, None
    return result, update, taken


def heartbeat(
    document: sessions.Document | None,
    slots: SlotsDocument,
    *,
    claim_id: str,
    now: datetime,
    lease_s: float,
    progress: tuple[int, int] | None,
    path: str,
) -> tuple[Heartbeat, sessions.Update | None, dict[str, Any] | None]:
    """sessions.heartbeat, renewing the claim's slot with its lease."""
    beat, update = sessions.heartbeat(document, claim_id, now, lease_s, progress, path=path)
    return beat, update, renew(slots, claim_id, now, lease_s) if beat.still_owner else None
