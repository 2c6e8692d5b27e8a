"""DATA read in chunks: its end, dot-stuffing and the checks of the bytes, as they arrive.

aiosmtpd reads DATA one line at a time and keeps every line as an object of its own
until the final dot: a post of many short lines costs seconds of the event loop and
tens of megabytes before anything can look at it. This reader takes whatever the
socket delivered, finds the end of the data and undoes dot-stuffing with C searches,
and hands each block of complete lines to `check_wire` and the pre-scan. From the first
refusal on it keeps nothing and only looks for the end of the data, which it still
reads: the reply comes after it (RFC 5321 section 4.2.5).

The data ends with CRLF "." CRLF only, as in aiosmtpd since 1.4.6 (a bare LF never
ends it: SMTP smuggling). Lines longer than aiosmtpd's limit and data over the size
limit get aiosmtpd's answers, with enhanced status codes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from relay.inbound import Prescan, Rejection, Shape, check_wire
from relay.inbound.wire import has_long_line

CHUNK = 1 << 20  # read what arrived, up to this much at a time
_END = b"\r\n.\r\n"
_FIRST = b".\r\n"  # the end, when the data is empty


@dataclass(frozen=True)
class Received:
    """The message (dot-stuffing undone) and its pre-scan, or why it was refused."""

    content: bytes | None
    shape: Shape | None
    refusal: Rejection | None


async def read_data(
    reader: asyncio.StreamReader,
    *,
    size_limit: int | None,
    line_limit: int,
    on_bytes: Callable[[int], None],
) -> Received | None:
    """Read DATA up to its end; `None` if the connection ended first.

    `line_limit` counts the CRLF and a stuffed dot, like aiosmtpd's; `on_bytes` hears
    of every chunk (the session's measure of progress)."""
    scan = Prescan()
    kept = bytearray()
    pending = b""  # not yet handled: a partial line, or the tail kept while draining
    at_line_start = True  # `pending` begins a line
    refusal: Rejection | None = None
    taken = 0

    def take(region: bytes) -> Rejection | None:
        """Check and keep a block of complete lines; the refusal, if any."""
        nonlocal taken
        taken += len(region)
        if size_limit and taken > size_limit:
            return Rejection(552, "5.3.4", "Message too big for this list")
        if has_long_line(region, line_limit - 2):
            return Rejection(500, "5.5.2", "Line too long")
        if region.startswith(b"."):
            region = region[1:]
        region = region.replace(b"\r\n.", b"\r\n")
        try:
            check_wire(region)
            scan.feed(region)
        except Rejection as rejection:
            return rejection
        kept.extend(region)
        return None

    while True:
        chunk = await reader.read(CHUNK)
        if not chunk:
            return None
        on_bytes(len(chunk))
        data = pending + chunk if pending else chunk
        if at_line_start and data.startswith(_FIRST):
            stop = 0
        else:
            found = data.find(_END)
            stop = found + 2 if found >= 0 else -1
        if stop >= 0:
            _unread(reader, data[stop + len(_FIRST) :])
            if refusal is None and stop:
                refusal = take(data[:stop])
            break
        if refusal is None:
            cut = data.rfind(b"\r\n") + 2 if b"\r\n" in data else 0
            pending = data[cut:]
            if cut:
                refusal = take(data[:cut])
            if refusal is None and len(pending) > line_limit:
                refusal = Rejection(500, "5.5.2", "Line too long")
        else:
            pending = data
        if refusal is not None:
            kept.clear()
            if len(pending) > len(_END) - 1:
                pending, at_line_start = pending[-(len(_END) - 1) :], False
    if refusal is not None:
        return Received(None, None, refusal)
    try:
        shape = scan.close()
    except Rejection as rejection:
        return Received(None, None, rejection)
    return Received(bytes(kept), shape, None)


def _unread(reader: asyncio.StreamReader, data: bytes) -> None:
    """Give back what a client sent after the end of the data (commands it pipelined).

    StreamReader has no public way to do so; aiosmtpd reaches into the same buffer."""
    if data:
        reader._buffer[0:0] = data  # type: ignore[attr-defined]
