"""The envelope sender of each copy: a VERP address that names its delivery.

Every delivery gets a bounce token when it is queued: 80 random bits in lower-case
base32, 16 characters, stored with the delivery (`deliveries.bounce_token`). Its copy is
sent from `<list-local>+bounce-<token>@<list-domain>`, so a bounce arrives at an address
that says which copy it is about, and nobody can make one up for a copy they did not see.

The token is not the copy's reference (relay/core/references.py): the reference names a
leaked copy's recipient inside the encryption and must never travel on the envelope,
where every hop reads it.

`bounce_address` makes the address and `bounce_token` reads it back, in one shape only:
the list's local part, `+bounce-`, the token, the list's domain (case does not matter).
Anything else, a missing or short token, another `+` or a character outside base32, is
not a bounce address.
"""

from __future__ import annotations

import base64
import re
import secrets

MARK = "+bounce-"
TOKEN_LENGTH = 16  # characters: 80 bits
_TOKEN = re.compile(rf"[a-z2-7]{{{TOKEN_LENGTH}}}")


def new_token() -> str:
    return base64.b32encode(secrets.token_bytes(TOKEN_LENGTH * 5 // 8)).decode("ascii").lower()


def bounce_address(list_address: str, token: str) -> str:
    """The envelope sender of the copy whose delivery carries `token`."""
    local, _, domain = list_address.rpartition("@")
    return f"{local}{MARK}{token}@{domain}"


def bounce_token(address: str, list_address: str) -> str | None:
    """The token of a bounce address of `list_address`; None for any other address."""
    local, at, domain = address.strip().lower().rpartition("@")
    list_local, _, list_domain = list_address.lower().rpartition("@")
    prefix = list_local + MARK
    if not at or domain != list_domain or not local.startswith(prefix):
        return None
    token = local[len(prefix) :]
    return token if _TOKEN.fullmatch(token) else None
