"""What the relay believes of a verified post, and nothing more.

The signature is fresh and used for the first time (freshness.py), and the post is
attributed to the signing key's registered owner (relay.store.key_owners), whose From
address it must carry: the outer From is unsigned, and what members' clients show as
the author must never be someone the signature does not stand for.
"""

from __future__ import annotations

from email.message import EmailMessage

from relay.core import addresses
from relay.core.config import IntakeSettings
from relay.core.database import Database
from relay.inbound import Rejection, VerifiedPost, freshness
from relay.model import utcnow
from relay.store import incoming
from relay.store.key_owners import Owner, owner_of


def believe(
    db: Database,
    settings: IntakeSettings,
    raw: bytes,
    post: VerifiedPost,
    message: EmailMessage,
    mail_from: str,
) -> incoming.Post:
    """The post as the relay believes it; raises `Rejection`, or `incoming.AlreadyReceived`
    for a signature used before (a replay, which the caller counts)."""
    arrived = utcnow()
    freshness.check_fresh(
        post.signed_at, arrived, max_age=settings.max_signature_age, skew=settings.max_clock_skew
    )
    used = incoming.used_signature(db, post.identity)
    if used is not None:
        raise incoming.AlreadyReceived(used)
    with db.transaction() as session:
        owner = owner_of(session, post.signer)
    if owner is None:  # authorised a moment ago, removed since
        raise Rejection(550, "5.7.1", "the signing key is not authorised to post to this list")
    mismatch = _from_mismatch(message, post, owner)
    if mismatch is not None and settings.from_mismatch == "refuse":
        raise Rejection(
            550,
            "5.7.1",
            f"From: {mismatch} is not an address of the signer (key {post.signer} "
            f"belongs to {owner.address}); send from your registered address",
        )
    return incoming.Post(
        raw=raw,
        payload=post.payload,
        subject=post.subject,
        mail_from=mail_from,
        signer=post.signer,
        original_message_id=_header(message, "Message-ID"),
        signed_at=post.signed_at,
        signature=post.identity,
        poster=owner.address,
        from_mismatch=mismatch,
    )


def _from_mismatch(message: EmailMessage, post: VerifiedPost, owner: Owner) -> str | None:
    """The From address (outer, or the signed protected one) that is not the signer's own.
    A missing or unreadable From, or more than one address in it, counts as a mismatch."""
    values = [_header(message, "From") or ""]
    if "from" in post.protected:
        values.append(post.protected["from"])
    for value in values:
        try:
            found = addresses.from_header("From", value)
        except addresses.AddressRefused as exc:
            raise Rejection(550, "5.1.3", str(exc)) from None
        if len(found) != 1:
            return value.strip() or "(none)"
        if not owner.owns_from(found[0]):
            return found[0]
    return None


def _header(message: EmailMessage, name: str) -> str | None:
    try:
        value = message.get(name)
    except (ValueError, IndexError):
        return None
    return str(value)[:998] if value is not None else None
