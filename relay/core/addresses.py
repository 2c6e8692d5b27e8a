"""Addresses that come from a post: plain `local@domain`, nothing a mail system reroutes.

An address in a post's header fields or keyword lines decides who is a list party and who
an outsider. Old routing syntaxes make one string mean two places: the relay would judge
`boss%corp.example@distro-a.example` as someone at distro-a, while distro-a's mail system
may hand it on to corp.example (the "percent hack"); a source route (`@a:b@c`), a bang
path (`a!b@c`) or a quoted local part holding `@` or `%` do the same, and a domain of
look-alike letters (a Cyrillic `і` in `dіstro-a.example`) passes for a member's team to a
human reader. So an address from a post must be a dot-atom local part of ASCII letters,
digits and the usual safe characters, at an ASCII host name; an internationalised label
(`xn--`) is refused when its letters fold to an ASCII name (a look-alike of one).
`AddressRefused` carries the reason for `550 5.1.3` (RFC 3463: bad destination syntax).
"""

from __future__ import annotations

import re
from email import policy
from email.headerregistry import Address as HeaderAddress
from email.parser import BytesHeaderParser

from pydantic import TypeAdapter, ValidationError

from relay.core.config import Address
from relay.core.errors import RelayError
from relay.core.normalise import fold

# RFC 5322 atext less the routing characters "%" and "!" (and "/", "=", which
# carry X.400-style routing through some gateways).
_LOCAL = re.compile(r"^[A-Za-z0-9#$&'*+?^_`{|}~-]+(?:\.[A-Za-z0-9#$&'*+?^_`{|}~-]+)*$")
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_ROUTE = re.compile(r"<\s*@")
_PARSER = BytesHeaderParser(policy=policy.default)
MAX_LENGTH = 254  # RFC 5321 §4.5.3.1.3, as a path


_ADDRESS = TypeAdapter(Address)


def normalise_address(value: str) -> str:
    """Lower-case and validate an address given on the command line."""
    try:
        return _ADDRESS.validate_python(value.strip())
    except ValidationError:
        raise RelayError(f"not an email address: {value!r}") from None


class AddressRefused(RelayError):
    """An address from a post that is not a plain address (SMTP: 550 5.1.3)."""

    smtp_status = "5.1.3"


def plain(address: str) -> str:
    """`address` (an addr-spec) checked and lower-cased; raises AddressRefused."""
    text = address.strip()
    if len(text) > MAX_LENGTH:
        raise AddressRefused(f"the address {text[:40]!r}... is too long")
    if text.count("@") != 1:
        raise AddressRefused(f"{text!r} is not one plain address (exactly one '@')")
    local, _, domain = text.rpartition("@")
    _check_local(text, local)
    _check_domain(text, domain)
    return f"{local}@{domain}".lower()


def from_header(name: str, value: str) -> list[str]:
    """Every address in one header field's value, each checked with `plain`."""
    if _ROUTE.search(value):
        raise AddressRefused(f"{name}: a source route (<@host:...>) is not a plain address")
    header = _PARSER.parsebytes(f"{name}: {value}\r\n\r\n".encode("utf-8", "surrogateescape"))
    try:
        found: tuple[HeaderAddress, ...] = header[name].addresses if header[name] else ()
    except (AttributeError, ValueError, IndexError):
        raise AddressRefused(f"{name}: the field cannot be read as addresses") from None
    checked = []
    for address in found:
        if not address.domain:
            raise AddressRefused(f"{name}: {address.addr_spec!r} has no domain")
        if address.addr_spec.startswith('"'):
            raise AddressRefused(f"{name}: {address.addr_spec!r}: a quoted local part")
        try:
            checked.append(plain(f"{address.username}@{address.domain}"))
        except AddressRefused as exc:
            raise AddressRefused(f"{name}: {exc}") from None
    return checked


def _check_local(text: str, local: str) -> None:
    if "%" in local or "!" in local:
        raise AddressRefused(f"{text!r}: '%' or '!' in the local part routes mail elsewhere")
    if not _LOCAL.match(local):
        raise AddressRefused(f"{text!r}: the local part must be plain ASCII (no quotes)")


def _check_domain(text: str, domain: str) -> None:
    if not domain.isascii():
        raise AddressRefused(f"{text!r}: the domain has non-ASCII (look-alike) letters")
    labels = domain.lower().split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise AddressRefused(f"{text!r}: the domain is not a plain host name")
    for label in labels:
        if label.startswith("xn--") and _ascii_lookalike(label):
            raise AddressRefused(f"{text!r}: the domain label {label} looks like an ASCII name")


def _ascii_lookalike(label: str) -> bool:
    """An IDNA label whose letters fold (Unicode TR39 skeleton) to plain ASCII: it was
    made to pass for that ASCII name."""
    try:
        decoded = label.encode("ascii").decode("idna")
    except UnicodeError:
        return True  # an xn-- label that does not decode is no name at all
    return decoded != label and fold(decoded).isascii()
