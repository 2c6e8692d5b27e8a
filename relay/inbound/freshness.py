"""A signature is believed once, and only while fresh.

Anyone who once saw a signed post (on the wire, in a member's mailbox, in an archive)
holds bytes that verify forever. So a verified signature proves who wrote the words and
when, not that the words are meant now: the relay believes each one once, and only if it
was made shortly before it arrived.

`identity` names a signature by who signed what when: the signer's primary fingerprint,
the signature's creation time, and a digest of the signed content with line ends and
trailing whitespace normalised. That survives every change a replayer can make without
the key: new outer headers, envelope, armour headers or line wrapping, wrapping the same
signed entity in encryption to the list key, or trailing spaces in a cleartext signature
(which its hash ignores), and also the re-encodings by which some signature algorithms
(DSA, ECDSA) can be made to verify in a second form. The digest is what
`used_signatures.digest` keeps unique.

`check_fresh` bounds the creation time: not older than `max_age` at arrival (a sending
MTA retries for days, so a post may arrive late), and not more than `skew` after it.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta

from relay.core.times import format_when
from relay.inbound.wire import Rejection

_TRAILING_SPACE = re.compile(rb"[ \t\r]+$", re.MULTILINE)


def identity(signer: str, signed_at: datetime, content: bytes) -> str:
    """The signature's identity: hex SHA-256 over signer, creation time and content."""
    canonical = _TRAILING_SPACE.sub(b"", content.replace(b"\r\n", b"\n")).rstrip(b"\n")
    digest = hashlib.sha256()
    digest.update(signer.upper().encode("ascii") + b"\0")
    digest.update(str(int(signed_at.timestamp())).encode("ascii") + b"\0")
    digest.update(hashlib.sha256(canonical).digest())
    return digest.hexdigest()


def check_fresh(
    signed_at: datetime, arrived_at: datetime, *, max_age: timedelta, skew: timedelta
) -> None:
    """Refuse a signature made too long before it arrived, or dated in the future."""
    if signed_at < arrived_at - max_age:
        raise Rejection(
            550,
            "5.7.1",
            f"the signature was made {format_when(signed_at)}, more than {_span(max_age)} "
            "before it arrived; sign the post again",
        )
    if signed_at > arrived_at + skew:
        raise Rejection(
            550,
            "5.7.1",
            f"the signature claims to be made {format_when(signed_at)}, in the future "
            f"(now: {format_when(arrived_at)}); check the signing machine's clock",
        )


def _span(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
