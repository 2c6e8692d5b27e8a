"""The refusal of a post (`Rejection`) and the checks on the raw DATA bytes.

aiosmtpd 1.4.6 passes bare CR and bare LF through to the application. Another
MTA may take either for a line end, and so read a second message smuggled
inside ours ("SMTP smuggling"). The relay refuses such input instead of
normalising it: normalising would change bytes a signature may cover.
`has_long_line` finds a line too long in C searches, without splitting the lines.
"""

from __future__ import annotations

import re

_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_MAX_TEXT = 300  # keeps the reply line well under SMTP's 512 octets
_CHECKPOINT = 512  # less than the shortest line too long to allow: every such line has one


def printable(text: str, limit: int = _MAX_TEXT) -> str:
    """`text` as one line of printable ASCII, anything else escaped, at most `limit` characters."""
    escaped = _UNPRINTABLE.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."


class Rejection(Exception):
    """A post refused during the SMTP dialogue; `reply` is the line to answer with.

    A plain exception class rather than a frozen dataclass: Python and contextlib
    assign `__traceback__` to exceptions in flight, which a frozen dataclass forbids.
    """

    def __init__(self, code: int, status: str, text: str) -> None:
        super().__init__(code, status, text)
        self.code = code
        self.status = status  # enhanced status code (RFC 3463)
        self.text = printable(text)  # never lets a CR, LF or 8-bit byte into the reply

    @property
    def reply(self) -> str:
        return f"{self.code} {self.status} {self.text}"

    def __str__(self) -> str:
        return self.reply


def malformed(why: str) -> Rejection:
    """The refusal of a post whose structure the relay will not parse (554 5.6.0)."""
    return Rejection(554, "5.6.0", f"malformed message: {why}")


def check_wire(raw: bytes) -> None:
    """Refuse any CR or LF that is not part of a CRLF pair."""
    rest = raw.replace(b"\r\n", b"")
    if b"\r" in rest or b"\n" in rest:
        raise Rejection(550, "5.5.2", "message contains a bare CR or LF; lines must end in CRLF")


def has_long_line(block: bytes, limit: int) -> bool:
    """Whether a line of `block` (which begins a line) holds more than `limit` octets
    before its CRLF. In C searches from a checkpoint every 512 octets: a line too long
    holds one, and each search looks no further than the longest line allowed."""
    width = limit + 2  # octets from one LF to the next, CR included, in a line allowed
    size = len(block)
    for here in range(0, size, _CHECKPOINT):
        low = max(0, here - width)
        left = block.rfind(b"\n", low, here)
        if left < 0 and low > 0:
            return True
        if block.find(b"\n", here, left + width + 1) < 0 and left + width + 1 <= size:
            return True
    return False
