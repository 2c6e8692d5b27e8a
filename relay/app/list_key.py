"""The list's public key, published: so that members can check the list's signature on
every copy, and encrypt to the list.

Three ways out, all the same key (its primary key and the list's user ID, minimal: no
third-party signatures, nothing secret): `relay key export` prints it armoured; a Web Key
Directory tree (draft-koch-openpgp-webkey-service) for a web server to publish, so that
`gpg --locate-keys <list address>` finds it; and the `Autocrypt:` header of every copy
(https://autocrypt.org/level1.html), whose keydata keeps only the encryption subkey.
The WKD hash and the header's folding are pure functions; the gpg export behind the header
runs once per process and key, not once per copy.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from relay.core.config import Settings
from relay.core.crypto import Crypto
from relay.core.errors import KeyProblem, RelayError
from relay.store import key_owners

# z-base-32 (RFC 6189 §5.1.6, the WKD draft's encoding of the SHA-1 of the local part).
_ZBASE32 = "ybndrfg8ejkmcpqxot1uwisza345h769"
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_WELL_KNOWN = PurePosixPath(".well-known", "openpgpkey")
_FOLD_WIDTH = 78  # RFC 5322 §2.1.1: lines SHOULD be at most 78 characters
_KEYDATA_LINE = 76  # base64 per continuation line: one space and 76 characters


@dataclass(frozen=True)
class PublicKey:
    """The list key as `relay key export` prints it."""

    fingerprint: str
    address: str
    armoured: bytes


@dataclass(frozen=True)
class WkdTree:
    """What `write_wkd` wrote under its folder."""

    fingerprint: str
    address: str
    files: tuple[Path, ...]


# Pure parts


def zbase32(data: bytes) -> str:
    """z-base-32 of `data`, five bits a character from the most significant; the last
    group is padded with zero bits (160 bits of SHA-1 make exactly 32 characters)."""
    bits = int.from_bytes(data, "big")
    count = len(data) * 8
    chars = -(-count // 5)
    bits <<= chars * 5 - count
    return "".join(_ZBASE32[(bits >> (5 * (chars - 1 - i))) & 31] for i in range(chars))


def wkd_hash(local_part: str) -> str:
    """The WKD file name of a local part: z-base-32 of the SHA-1 of it, ASCII letters
    lower-cased (the draft maps only those; gpg-wks-client does the same)."""
    return zbase32(hashlib.sha1(local_part.translate(_ASCII_LOWER).encode("utf-8")).digest())


def wkd_paths(address: str) -> tuple[PurePosixPath, ...]:
    """The files of a WKD tree for `address`, relative to the web root: the key and the
    policy file of the advanced method (served by openpgpkey.<domain>), then those of the
    direct method (served by <domain>)."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or "/" in domain:
        raise RelayError(f"not an address for a Web Key Directory: {address!r}")
    name = wkd_hash(local)
    advanced = _WELL_KNOWN / domain.translate(_ASCII_LOWER)
    return (
        advanced / "hu" / name,
        advanced / "policy",
        _WELL_KNOWN / "hu" / name,
        _WELL_KNOWN / "policy",
    )


def autocrypt_field(address: str, keydata: bytes) -> bytes:
    """The `Autocrypt:` header field (Autocrypt Level 1 §2.1), folded at spaces so that each
    line stays within 78 characters (only an address too long for one line is longer, and
    still far below 998): the attributes as they fit, then the base64 keydata on lines of
    their own (its parser ignores the spaces that folding leaves). CRLF line ends."""
    if not address.isascii() or any(c in address for c in "; \t\r\n"):
        raise ValueError(f"not an address for an Autocrypt header: {address!r}")
    words = ["Autocrypt:", f"addr={address};", "prefer-encrypt=mutual;", "keydata="]
    lines = [words[0].encode()]
    for word in words[1:]:
        if len(lines[-1]) + 1 + len(word) <= _FOLD_WIDTH:
            lines[-1] += b" " + word.encode()
        else:
            lines.append(b" " + word.encode())
    encoded = base64.b64encode(keydata)
    lines += [
        b" " + encoded[at : at + _KEYDATA_LINE] for at in range(0, len(encoded), _KEYDATA_LINE)
    ]
    return b"\r\n".join(lines) + b"\r\n"


# The list's key, from its keyring


def public_key(crypto: Crypto, settings: Settings) -> PublicKey:
    """The list key as published, armoured, with its fingerprint."""
    fingerprint = key_owners.list_key(crypto).fingerprint
    address = settings.list.address
    armoured = crypto.export_public_key(fingerprint, address=address, armor=True)
    return PublicKey(fingerprint, address, armoured)


def write_wkd(crypto: Crypto, settings: Settings, root: Path) -> WkdTree:
    """Write the WKD tree of the list key under `root` (created if missing): the binary key
    with only the list's user ID, and an empty policy file, for both methods. Files are
    world-readable (a web server serves them) and replaced whole, never half-written."""
    fingerprint = key_owners.list_key(crypto).fingerprint
    address = settings.list.address
    key = crypto.export_public_key(fingerprint, address=address)
    written = []
    for relative in wkd_paths(address):
        target = root.joinpath(*relative.parts)
        _write_public(target, key if relative.parent.name == "hu" else b"")
        written.append(target)
    return WkdTree(fingerprint, address, tuple(written))


def autocrypt_header(crypto: Crypto, fingerprint: str, address: str) -> bytes | None:
    """The `Autocrypt:` field for copies signed by `fingerprint` from `address`, or None
    when that key has no user ID for the address (a copy is never held for want of it).

    Computed once per keyring, key and address: gpg's export costs a process, and every
    copy carries the header. A list key changed under a running relay (a new expiry, say)
    shows in the header from its next start."""
    wanted = (fingerprint.upper(), address.lower())
    with _HEADERS_LOCK:
        known = _HEADERS.get(crypto, {})
        if wanted in known:
            return known[wanted]
    try:
        keydata = crypto.export_public_key(
            fingerprint, address=wanted[1], only_encryption_subkeys=True
        )
        field: bytes | None = autocrypt_field(wanted[1], keydata)
    except KeyProblem:
        field = None
    with _HEADERS_LOCK:
        _HEADERS.setdefault(crypto, {})[wanted] = field
    return field


# Per keyring (held weakly: a closed keyring takes its entries along), then per key and
# address. The lock: copies are sealed on several worker threads.
_HEADERS: weakref.WeakKeyDictionary[Crypto, dict[tuple[str, str], bytes | None]] = (
    weakref.WeakKeyDictionary()
)
_HEADERS_LOCK = threading.Lock()


def _write_public(target: Path, data: bytes) -> None:
    """Replace `target` with `data`, mode 0644, its folders created mode 0755."""
    try:
        for folder in reversed(target.parents):
            if not folder.exists():
                folder.mkdir()
                os.chmod(folder, 0o755)  # whatever the umask: a web server reads them
        fd, scratch = tempfile.mkstemp(prefix=".relay-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(scratch, 0o644)
            os.replace(scratch, target)
        except BaseException:
            Path(scratch).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise RelayError(f"cannot write {target}: {exc.strerror or exc}") from None
