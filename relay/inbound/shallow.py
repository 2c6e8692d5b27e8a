"""The top level of a post, read in linear time: what the signature check needs, no more.

A post is unauthenticated until gpg says otherwise, so before that only its top level is
read: `read_top` parses the header section of the message with the standard library,
makes the strict checks that need nothing deeper (structure.check_part), and for a
multipart splits the body at its delimiter lines into the top-level parts, each with
its header section parsed and its body kept as it came. Nothing below the top level is
parsed; that is check_structure's work, once the signature is good.

The split uses the standard library's own delimiter rule and the boundary its header
parse reads, so the parts are the ones the full parse will find (admission.py checks
that it did). Parts of multipart/signed and multipart/encrypted, the two forms whose
parts a signature check reads, are parsed with the default policy and checked like the
top level; the parts of any other multipart only have their Content-Type read, to tell
a partly signed post from an unsigned one.
"""

from __future__ import annotations

import re
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import Policy
from itertools import islice, pairwise
from typing import cast

from relay.inbound.prescan import MAX_PARTS, Shape, prescan
from relay.inbound.structure import check_part
from relay.inbound.wire import Rejection, malformed

_READ_PARTS = ("multipart/signed", "multipart/encrypted")


def read_top(data: bytes, shape: Shape | None = None) -> EmailMessage:
    """The top level of `data` (wire-checked; pre-scanned here unless `shape` is given).

    For a multipart, the payload is the list of top-level parts; otherwise the body,
    undecoded, as the parser would keep it."""
    if shape is None:
        shape = prescan(data)
    head, body = _split_entity(data)
    try:
        return _read(head, body, shape)
    except Rejection:
        raise
    except Exception:  # the header parser raises assorted errors on hostile input
        raise malformed("a header field cannot be parsed") from None


def _read(head: bytes, body: bytes, shape: Shape) -> EmailMessage:
    top = _parse_head(head, policy.default)
    media, boundary = top.get_content_type(), top.get_boundary()
    if media != shape.top_type or boundary != shape.top_boundary:
        raise malformed("the Content-Type reads two ways")
    if top.get_content_maintype() != "multipart":
        top.set_payload(body.decode("ascii", "surrogateescape"))
        check_part(top)
        return top
    check_part(top)
    pieces = top_parts(body, boundary or "")
    strict = media in _READ_PARTS and len(pieces) == 2
    top.set_payload([_part(piece, strict) for piece in pieces])
    return top


def top_parts(body: bytes, boundary: str) -> list[bytes]:
    """The top-level parts of a multipart body, exactly as sent: from after the CRLF that
    ends a delimiter line to before the CRLF that starts the next (RFC 2046 section
    5.1.1), up to the close delimiter. The delimiter pattern is the email package's own
    (transport padding allowed)."""
    delimiter = re.compile(
        rb"(?:\A|(?<=\r\n))--" + re.escape(boundary.encode("ascii")) + rb"(--)?[ \t]*(?:\r\n|\Z)"
    )
    found = list(islice(delimiter.finditer(body), MAX_PARTS + 1))
    pieces = []
    for here, following in pairwise(found):
        if here[1]:  # the close delimiter: the epilogue follows
            break
        pieces.append(body[here.end() : max(here.end(), following.start() - 2)])
    return pieces


def _split_entity(data: bytes) -> tuple[bytes, bytes]:
    """Header section and body: the header section ends at the first empty line (the
    pre-scan refused any other end)."""
    if data.startswith(b"\r\n"):
        return b"", data[2:]
    head, separator, body = data.partition(b"\r\n\r\n")
    return (head + b"\r\n" if separator else head), body


def _parse_head(head: bytes, chosen: Policy) -> EmailMessage:
    return cast(EmailMessage, BytesParser(policy=chosen).parsebytes(head, headersonly=True))


def _part(piece: bytes, strict: bool) -> EmailMessage:
    head, body = _split_entity(piece)
    part = _parse_head(head, policy.default if strict else policy.compat32)
    part.set_payload(body.decode("ascii", "surrogateescape"))
    if strict:
        check_part(part)
    return part
