"""Strict MIME parsing of an inbound post.

The stdlib parser is lenient on purpose: it records defects instead of failing,
decodes broken base64 and quoted-printable into mangled text without a word, and
recurses once per nesting level. For a relay that verifies a signature and then
redistributes the content, leniency is a parser differential: what gpg checked
and what a member's client shows could differ. So anything that changes how a
post is split into parts or decoded is refused here with 554 5.6.0; harmless
oddities of ordinary mail (obsolete header syntax, 8-bit headers) are not.
"""

from __future__ import annotations

import binascii
import re
from email import errors, policy
from email.headerregistry import ContentTransferEncodingHeader
from email.message import EmailMessage
from email.parser import BytesParser
from typing import cast

from relay.inbound.wire import malformed, printable

MAX_DEPTH = 20  # multipart and message/* levels

# Defects that mean the parser had to guess where a part or the header section ends.
_FATAL_DEFECTS: dict[type[errors.MessageDefect], str] = {
    errors.NoBoundaryInMultipartDefect: "multipart without a boundary parameter",
    errors.StartBoundaryNotFoundDefect: "multipart boundary declared but never found",
    errors.CloseBoundaryNotFoundDefect: "multipart without its close delimiter",
    errors.MultipartInvariantViolationDefect: "multipart without parts",
    errors.InvalidMultipartContentTransferEncodingDefect: "multipart with a transfer encoding",
    errors.MissingHeaderBodySeparatorDefect: "a line in the header section is not a field",
    errors.FirstHeaderLineIsContinuationDefect: "the header section starts with a continuation",
    errors.MisplacedEnvelopeHeaderDefect: "a 'From ' line inside the header section",
}
# Fields this relay reads; two copies invite two readers to pick different ones.
SINGLE_FIELDS = ("content-type", "content-transfer-encoding", "from", "subject")
_IDENTITY_CTES = frozenset({"7bit", "8bit", "binary"})
_BASE64_SPACE = re.compile(rb"[ \t\r\n]+")
# "=" must start a hex escape or a soft line break (optional transport padding first).
_BAD_QP_ESCAPE = re.compile(r"=(?![0-9A-Fa-f]{2}|[ \t]*(?:\r\n|\n|\Z))")
_BOUNDARY = re.compile(r"[\x20-\x7e]{1,200}")


def check_structure(raw: bytes) -> EmailMessage:
    """Parse `raw` with the default policy and refuse it unless its MIME tree is sound.

    The full parse costs far more than reading the bytes: run it only on input that
    passed the pre-scan (relay/inbound/prescan.py), which bounds parts, nesting, lines
    and header fields, and, for a post, only once its signature was found good."""
    try:
        message = BytesParser(policy=policy.default).parsebytes(raw)
        _check_tree(message)
    except RecursionError:
        # Backstop only: the pre-scan keeps real input far below the interpreter's limit.
        raise malformed(f"MIME nesting deeper than {MAX_DEPTH} levels") from None
    return message


def check_part(part: EmailMessage) -> None:
    """The strict checks of one entity that need nothing below it and no header object
    but its MIME fields: what the parse of its header section noticed, a container's
    transfer encoding and Content-Type, a leaf's transfer encoding and content.

    For the top level of a post read before its signature is checked (shallow.py);
    check_structure makes these checks and all the others once the signature is good."""
    _check_defects(part)
    if part.get_content_maintype() in ("multipart", "message"):
        _check_container(part)
    else:
        _check_body(part)


def _check_tree(root: EmailMessage) -> None:
    stack = [(root, 0)]  # iterative: the depth being checked is attacker-chosen
    while stack:
        part, depth = stack.pop()
        _check_entity(part)
        if part.is_multipart():  # multipart/* and message/*
            depth += 1
            if depth > MAX_DEPTH:
                raise malformed(f"MIME nesting deeper than {MAX_DEPTH} levels")
            _check_container(part)
            stack.extend((cast(EmailMessage, child), depth) for child in part.get_payload())
        else:
            _check_body(part)


def _check_entity(part: EmailMessage) -> None:
    _check_defects(part)
    names = [name.lower() for name in part]
    for name in SINGLE_FIELDS:
        if names.count(name) > 1:
            raise malformed(f"more than one {name} header field")
    try:
        # Header objects are built lazily; build them now, so that a field the
        # parser chokes on fails here and not in whatever code reads it later.
        part.items()
    except Exception:  # the header parser raises assorted errors on hostile input
        raise malformed("a header field cannot be parsed") from None


def _check_defects(part: EmailMessage) -> None:
    for defect in part.defects:
        for kind, why in _FATAL_DEFECTS.items():
            if isinstance(defect, kind):
                raise malformed(why)


def _check_container(part: EmailMessage) -> None:
    if _cte(part) not in _IDENTITY_CTES:
        raise malformed("a multipart or message part has a transfer encoding")
    if part.get_content_maintype() != "multipart":
        return
    # An unquoted "=" in a boundary is read one way here and another way by most
    # mail clients, so the Content-Type of a multipart must parse cleanly.
    header = part["content-type"]
    if any(not isinstance(d, errors.ObsoleteHeaderDefect) for d in header.defects):
        raise malformed("invalid Content-Type on a multipart")
    if not _BOUNDARY.fullmatch(part.get_boundary() or ""):
        raise malformed("invalid multipart boundary")


def _check_body(part: EmailMessage) -> None:
    cte = _cte(part)
    if cte in _IDENTITY_CTES:
        return
    body = cast(str, part.get_payload())  # undecoded; 8-bit bytes as surrogates
    if cte == "base64":
        try:
            binascii.a2b_base64(_BASE64_SPACE.sub(b"", body.encode("ascii")), strict_mode=True)
        except (UnicodeEncodeError, binascii.Error):
            raise malformed("invalid base64 content") from None
    elif cte == "quoted-printable":
        if _BAD_QP_ESCAPE.search(body):
            raise malformed("invalid quoted-printable content")
    else:
        raise malformed(f"unknown Content-Transfer-Encoding {printable(cte, 40)!r}")


def _cte(part: EmailMessage) -> str:
    header = part.get("content-transfer-encoding")
    if isinstance(header, ContentTransferEncodingHeader):
        return header.cte
    return "7bit"
