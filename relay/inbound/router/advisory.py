"""Which advisory a member's post is about, from signed data only.

In this order: an `X-Advisory` line; the protected In-Reply-To or References, when they
name a copy the relay sent (or its post); an advisory ID in the protected Subject; failing
those, the embargoed text the post quotes (relay.leaks.index).
"""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from relay.app import advisories
from relay.inbound import Rejection, VerifiedPost, keywords
from relay.leaks.content import read_content
from relay.leaks.index import EmbargoedText
from relay.model import Advisory, Delivery, Message

_MESSAGE_ID = re.compile(r"<[^<>\s]+>")
_ADVISORY_ID = re.compile(r"\b[A-Z][A-Z0-9]*-\d{4}-\d{3,}\b", re.IGNORECASE)


def advisory_of(
    session: Session,
    watch: EmbargoedText,
    list_domain: str,
    found: dict[str, str],
    post: VerifiedPost,
    payload: bytes,
) -> Advisory:
    """The advisory the post names or quotes; raises `Rejection` (550 5.6.0) for none."""
    subject = post.subject
    if (named := found.get(keywords.ADVISORY)) is not None:
        advisory = advisories.find(session, named)
        if advisory is None:
            raise Rejection(550, "5.6.0", f"no advisory {named} on this list")
        return advisory
    for reference in _references(post.protected):
        advisory_id = _replied_to(session, list_domain, reference)
        if advisory_id is not None:
            return advisories.get(session, advisory_id)
    for candidate in _ADVISORY_ID.findall(subject):
        if (advisory := advisories.find(session, candidate)) is not None:
            return advisory
    # No label: the text itself may quote an embargoed advisory.
    matches = watch.match(session, f"{subject}\n{read_content(payload).text}")
    if matches:
        return advisories.get(session, matches[0].advisory_id)
    raise Rejection(
        550,
        "5.6.0",
        "name the advisory: an 'X-Advisory: ID' line, a reply to the list's copy, "
        "or the advisory ID in the subject",
    )


def named_advisory(session: Session, found: dict[str, str]) -> str | None:
    """The advisory a post names (X-Advisory), if this list has it."""
    named = found.get(keywords.ADVISORY)
    advisory = advisories.find(session, named) if named is not None else None
    return advisory.id if advisory is not None else None


def _replied_to(session: Session, list_domain: str, reference: str) -> str | None:
    """The advisory of the copy (or the post) a Message-ID names, if the relay sent it."""
    found = session.execute(
        select(Delivery.advisory_id).where(Delivery.copy_message_id == reference)
    ).scalar_one_or_none()
    if found is not None:
        return found
    local, _, domain = reference.strip("<>").partition("@")
    if domain.lower() == list_domain and local.isalnum():
        message = session.get(Message, local)
        return message.advisory_id if message is not None else None
    return None


def _references(protected: dict[str, str]) -> list[str]:
    """The Message-IDs a post replies to, from its protected (signed) header fields."""
    ids: list[str] = []
    for name in ("in-reply-to", "references"):
        ids += _MESSAGE_ID.findall(protected.get(name, ""))
    return list(dict.fromkeys(reversed(ids)))  # the nearest reference first
