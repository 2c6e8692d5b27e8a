"""Archives and compressed streams inside a message, opened within limits.

gzip, bzip2, xz, zip and tar are recognised by their magic numbers, whatever their label.
The limits hold per message: bytes expanded, expansion ratio, nesting depth and member
count. Decompression streams with a cap (never ``extractall``, never a trusted header
size), so a bomb costs at most the cap. What goes over a limit, a damaged archive and an
encrypted member are reported unreadable; what each member holds is read like any part.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import re
import tarfile
import zipfile
import zlib
from collections.abc import Callable

__all__ = ["MAX_DEPTH", "MAX_EXPANDED", "MAX_MEMBERS", "MAX_RATIO", "Unpacker"]

MAX_EXPANDED = 32 * 1024 * 1024  # bytes decompressed per message, all archives together
MAX_RATIO = 100  # expanded / compressed, above RATIO_FLOOR
RATIO_FLOOR = 1024 * 1024  # a small member may expand as it likes (up to this)
MAX_DEPTH = 8  # archives, compressed streams and attached messages, one inside another
MAX_MEMBERS = 1000  # archive members and MIME parts per message

_ZIP_ERRORS = (
    zipfile.BadZipFile,
    NotImplementedError,
    RuntimeError,
    OSError,
    EOFError,
    lzma.LZMAError,
    zlib.error,
)
_COMPRESSED_SUFFIX = re.compile(r"\.(?:gz|tgz|bz2|xz)$", re.I)


class Unpacker:
    """The archives of one message and their budget; the reader of a message's parts
    (relay/leaks/content.py) is one, and reads each member back through `data`."""

    unreadable: list[str]
    expanded: int  # bytes decompressed so far
    members: int  # parts and archive members seen so far

    def data(self, data: bytes, name: str, *, depth: int) -> None:
        """Read bytes, whatever they claim to be (an archive member, a decompressed stream)."""
        raise NotImplementedError

    def unpack(self, data: bytes, name: str, depth: int) -> bool:
        """Open ``data`` if it is an archive or a compressed stream; False if it is neither."""
        for magic, opener in _CONTAINERS:
            if magic(data):
                if depth >= MAX_DEPTH:
                    self.unreadable.append(f"{name}: nested more than {MAX_DEPTH} containers deep")
                else:
                    opener(self, data, name, depth + 1)
                return True
        return False

    def _limit(self, compressed: int | None) -> tuple[int, str]:
        """The most bytes the next member may expand to, and what to say if it goes over."""
        left = MAX_EXPANDED - self.expanded
        budget = f"over the limit of {MAX_EXPANDED >> 20} MiB expanded per message"
        if compressed is None:
            return left, budget
        ratio = max(RATIO_FLOOR, compressed * MAX_RATIO)
        if ratio < left:
            return ratio, f"expands more than {MAX_RATIO} times (a compression bomb?)"
        return left, budget

    def _expanded(self, name: str, content: bytes, limit: tuple[int, str]) -> bool:
        """Count what was expanded; False (and reported) if it went over the limit."""
        most, reason = limit
        self.expanded += min(len(content), most)
        if len(content) > most:
            self.unreadable.append(f"{name}: {reason}")
            return False
        return True

    def _stream(self, data: bytes, name: str, depth: int, kind: str) -> None:
        limit = self._limit(len(data))
        try:
            content = _decompressed(kind, data, limit[0] + 1)
        except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
            self.unreadable.append(f"{name}: damaged {kind} data ({type(exc).__name__})")
            return
        if self._expanded(name, content, limit):
            inner = _COMPRESSED_SUFFIX.sub(lambda m: ".tar" if m.group() == ".tgz" else "", name)
            self.data(content, inner, depth=depth)

    def _zip(self, data: bytes, name: str, depth: int) -> None:
        # Counted before parsing: zipfile would build an object for every directory entry.
        if data.count(b"PK\x01\x02") + self.members > MAX_MEMBERS:
            self.unreadable.append(f"{name}: zip archive of more than {MAX_MEMBERS} members")
            return
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
            members = archive.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
            self.unreadable.append(f"{name}: damaged zip archive ({type(exc).__name__})")
            return
        if len(members) + self.members > MAX_MEMBERS:
            self.unreadable.append(f"{name}: zip archive of {len(members)} members")
            return
        with archive:
            for member in members:
                if member.is_dir():
                    continue
                self.members += 1
                label = f"{name}/{member.filename}"
                if member.flag_bits & 0x1:
                    self.unreadable.append(f"{label}: encrypted zip member")
                    continue
                limit = self._limit(member.compress_size)
                try:
                    with archive.open(member) as stream:
                        content = stream.read(limit[0] + 1)
                except _ZIP_ERRORS as exc:
                    self.unreadable.append(f"{label}: unreadable zip member ({exc})"[:200])
                    continue
                if self._expanded(label, content, limit):
                    self.data(content, label, depth=depth)

    def _tar(self, data: bytes, name: str, depth: int) -> None:
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
                for member in archive:  # one header at a time: never a listing of them all
                    self.members += 1
                    if self.members > MAX_MEMBERS:
                        self.unreadable.append(f"{name}: tar archive of too many members")
                        return
                    if not member.isfile():
                        continue
                    stream = archive.extractfile(member)
                    if stream is None:
                        continue
                    label = f"{name}/{member.name}"
                    limit = self._limit(None)  # sparse members expand: the budget holds
                    content = stream.read(limit[0] + 1)
                    if self._expanded(label, content, limit):
                        self.data(content, label, depth=depth)
        except (tarfile.TarError, OSError, EOFError) as exc:
            self.unreadable.append(f"{name}: damaged tar archive ({type(exc).__name__})")


def _decompressed(kind: str, data: bytes, most: int) -> bytes:
    """At most ``most`` bytes of a compressed stream: the readers decompress as they go."""
    raw = io.BytesIO(data)
    if kind == "gzip":
        with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
            return stream.read(most)
    if kind == "bzip2":
        with bz2.BZ2File(raw, mode="rb") as stream:
            return stream.read(most)
    with lzma.LZMAFile(raw, mode="rb") as stream:
        return stream.read(most)


_CONTAINERS: tuple[tuple[Callable[[bytes], bool], Callable[[Unpacker, bytes, str, int], None]], ...]
_CONTAINERS = (
    (lambda d: d.startswith(b"\x1f\x8b"), lambda r, d, n, x: r._stream(d, n, x, "gzip")),
    (
        lambda d: d.startswith(b"BZh") and d[4:10] == b"1AY&SY",
        lambda r, d, n, x: r._stream(d, n, x, "bzip2"),
    ),
    (lambda d: d.startswith(b"\xfd7zXZ\x00"), lambda r, d, n, x: r._stream(d, n, x, "xz")),
    (lambda d: d[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"), Unpacker._zip),
    (lambda d: d[257:262] == b"ustar", Unpacker._tar),
)
