"""Bounces at the edge: which recipient is a bounce address, and what a bounce reports.

Each copy goes out from a VERP address (relay/core/verp.py); what comes back there is a
delivery status notification (RFC 3464), a non-standard bounce, or junk. Anyone may send
anything, so a bounce is hostile input, read only within bounds:

- it is no larger than `[smtp] max_bounce_size` (256 KiB) and passed the pre-scan while
  DATA arrived (lines, parts, nesting, header fields: relay/inbound/prescan.py);
- the recipient of the delivery must occur in its decoded text at all, a linear check,
  before any detector runs;
- flufl.bounce's detectors (heuristic regular expressions for the non-standard formats)
  see at most its first `SCAN_BYTES`: a bounce's report comes first, what follows is the
  returned message;
- a detector that raises finds nothing; any other exception while reading it refuses
  it (`550 5.6.0`).

`read_bounce` returns the failures found (`relay.app.bounces.Failure`): for each RFC 3464
per-recipient block its Action, Status and Diagnostic-Code, and for the other formats what
flufl.bounce reports, permanent or temporary, with a generic status. `receive` reads one
and has relay/app/bounces.py apply it; the edge runs it in its intake pool.

A bounce address is the only recipient of its transaction: beside the list address (or
another bounce address) it is answered `452 4.5.3`, and the sender's MTA sends it on its
own. So a bounce never enters the path of a signed post, nor a post the bounce path.
"""

from __future__ import annotations

import email
import email.message
import logging
import re
from collections.abc import Iterator
from datetime import datetime

from flufl.bounce import all_failures

from relay.app import bounces
from relay.app.bounces import Applied, Failure
from relay.core import verp
from relay.core.config import Settings
from relay.core.database import Database
from relay.inbound.wire import Rejection
from relay.store.spool import Spool

log = logging.getLogger("relay.smtp")
# flufl.bounce logs each detector it runs (INFO) and re-raises what a detector raised after
# logging its traceback: on hostile input that is the sender's to fill our log with. The
# edge logs one line per bounce of its own.
logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)

SCAN_BYTES = 64 * 1024
NOT_A_BOUNCE = "not a delivery status notification for this address"
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")
DIAGNOSTIC_LENGTH = 200

SEPARATELY = "452 4.5.3 Send bounces and posts to the list as separate messages"
TOO_BIG = "552 5.3.4 Bounce too big"
RECEIVED = "250 2.0.0 Bounce received"


def token_of(address: str, list_address: str) -> str | None:
    """The bounce token when `address` is one of the list's bounce addresses."""
    return verp.bounce_token(address, list_address)


def bounce_of(rcpt_tos: list[str], list_address: str) -> str | None:
    """The token of a transaction to a bounce address; None for one to the list."""
    return next(filter(None, (token_of(r, list_address) for r in rcpt_tos)), None)


def too_big(mail_options: list[str], limit: int) -> bool:
    """Whether MAIL FROM's SIZE (RFC 1870) already says the bounce is over `limit`."""
    for option in mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit() and int(value) > limit:
            return True
    return False


def receive(
    db: Database, spool: Spool, settings: Settings, raw: bytes, token: str, now: datetime
) -> Applied:
    """Read the bounce sent to `token`'s address and apply it; raises Rejection."""
    recipient = bounces.recipient_for(db, token)
    if recipient is None:
        raise Rejection(550, "5.1.1", NOT_A_BOUNCE)
    failures = read_bounce(raw, recipient)
    try:
        return bounces.apply(db, spool, settings, token, failures, now)
    except bounces.NotABounce as exc:
        raise Rejection(550, "5.1.1", str(exc)) from None


def read_bounce(raw: bytes, recipient: str) -> list[Failure]:
    """The failures a bounce reports; raises Rejection when it cannot be read or is no
    bounce of the copy sent to `recipient`."""
    try:
        message = email.message_from_bytes(raw)
        if not _mentions(message, recipient.lower().encode("ascii", "replace")):
            raise Rejection(550, "5.1.1", NOT_A_BOUNCE)
        failures = list(_dsn_failures(message))
        scanned = message if len(raw) <= SCAN_BYTES else email.message_from_bytes(raw[:SCAN_BYTES])
        temporary, permanent = _detected(scanned)
    except Rejection:
        raise
    except Exception as exc:
        log.warning("bounce unreadable: %s", type(exc).__name__)
        raise Rejection(550, "5.6.0", "the bounce could not be read") from None
    reported = {f.address for f in failures}
    for found, hard in ((permanent, True), (temporary, False)):
        for raw_address in sorted(found):
            address = raw_address.decode("ascii", "replace").lower()
            if address not in reported:
                status = "5.0.0" if hard else "4.0.0"
                failures.append(Failure(address, hard, status, "non-standard bounce"))
                reported.add(address)
    return failures


def _detected(message: email.message.Message) -> tuple[frozenset[bytes], frozenset[bytes]]:
    """flufl.bounce's temporary and permanent failures. Its detectors stop at the first
    that raises (Yale's, on a message without From), so one that fails on this message
    counts as finding nothing: the RFC 3464 reading above stands on its own, and junk
    stays junk (550 5.1.1) rather than "unreadable"."""
    try:
        return all_failures(message)
    except Exception as exc:
        log.info("bounce detector failed: %s", type(exc).__name__)
        return frozenset(), frozenset()


def _mentions(message: email.message.Message, recipient: bytes) -> bool:
    """Whether the recipient occurs in any part's decoded text or delivery status."""
    for part in message.walk():
        if part.get_content_type() == "message/delivery-status":
            data: object = part.as_bytes()
        elif part.is_multipart():
            continue
        else:
            data = part.get_payload(decode=True)
        if isinstance(data, bytes) and recipient in data.lower():
            return True
    return False


def _dsn_failures(message: email.message.Message) -> Iterator[Failure]:
    """The failed and delayed recipients of the RFC 3464 parts, with status and diagnostic."""
    for part in message.walk():
        if part.get_content_type() != "message/delivery-status" or not part.is_multipart():
            continue
        blocks = part.get_payload()
        assert isinstance(blocks, list)
        for block in blocks:  # the first is about the reporting MTA: it has no Action
            if not isinstance(block, email.message.Message):
                continue
            action = str(block.get("action", "")).strip().lower()
            if action.startswith(("failed", "error")):
                permanent = True
            elif action.startswith("delayed"):
                permanent = False
            else:
                continue  # delivered, relayed, expanded
            found = _STATUS.search(str(block.get("status", "")))
            status = found.group(0) if found else ("5.0.0" if permanent else "4.0.0")
            diagnostic = _one_line(str(block.get("diagnostic-code", "")))
            for field in ("original-recipient", "final-recipient"):
                address = _address(str(block.get(field, "")))
                if address:
                    yield Failure(address, permanent, status, diagnostic)


def _address(value: str) -> str:
    """The address of an `rfc822; user@example.org` recipient field; "" for another type."""
    kind, _, address = value.partition(";")
    if kind.strip().lower() != "rfc822":
        return ""
    return address.strip().strip("<>").strip().lower()


def _one_line(value: str) -> str:
    """A diagnostic as one clean line: its type (`smtp;`) dropped, printable ASCII only."""
    kind, sep, text = value.partition(";")
    if sep and kind.strip().lower() in ("smtp", "x-unix", "x-postfix", "x-local"):
        value = text
    cleaned = " ".join(_UNPRINTABLE.sub(" ", value).split())
    return cleaned[:DIAGNOSTIC_LENGTH]
