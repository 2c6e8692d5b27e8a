"""The inbound checks in their order: nothing costlier than a linear pass before gpg.

1. `authenticate`, on bytes nobody has vouched for yet (the SMTP edge runs it in its
   bounded intake pool): `check_wire` and the pre-scan, unless the SMTP reader already
   made both while the bytes arrived (then it passes the `Shape`); the top-level
   reading (shallow.read_top); then `verify_post`: gpg, and whether the signing key
   may post. Each step is linear in the post's size or bounded by the pre-scan.
2. `Authenticated.admit`, once the signature is good: the strict full parse of the
   post (check_structure), and of the decrypted entity for an encrypted post, and a
   check that the full parse reads the top level as the signature check did.

Every refusal is a `Rejection`; which one comes first follows this order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage

from relay.core.crypto import Crypto
from relay.inbound.prescan import Shape, prescan
from relay.inbound.shallow import read_top
from relay.inbound.signature import VerifiedPost, verify_post
from relay.inbound.structure import check_structure
from relay.inbound.wire import Rejection, check_wire


@dataclass(frozen=True)
class Authenticated:
    """A post whose signature is good and whose signer may post; not yet fully parsed."""

    raw: bytes
    top: EmailMessage  # the top-level reading the signature check used
    post: VerifiedPost

    def admit(self) -> tuple[EmailMessage, VerifiedPost]:
        """The strict full parse; raises `Rejection` (554 5.6.0) for a malformed post."""
        message = check_structure(self.raw)
        _same_reading(message, self.top)
        if self.post.form.startswith("encrypted/"):
            check_structure(self.post.payload)  # what members will be sent
        return message, self.post


def authenticate(
    raw: bytes,
    crypto: Crypto,
    is_authorised: Callable[[str], bool],
    shape: Shape | None = None,
) -> Authenticated:
    """Check the signature of `raw` after linear checks only; raise `Rejection` if unfit.

    `shape`: the pre-scan's result when the caller already ran `check_wire` and the
    pre-scan over exactly these bytes."""
    if shape is None:
        check_wire(raw)
        shape = prescan(raw)
    top = read_top(raw, shape)
    return Authenticated(raw, top, verify_post(raw, top, crypto, is_authorised))


def admit(
    raw: bytes, crypto: Crypto, is_authorised: Callable[[str], bool]
) -> tuple[EmailMessage, VerifiedPost]:
    """All inbound checks in order: the parsed post and what its signature covers."""
    return authenticate(raw, crypto, is_authorised).admit()


def _same_reading(message: EmailMessage, top: EmailMessage) -> None:
    """The full parse must find the top level the signature check read: the same media
    type and, for a multipart, the same number of parts of the same types."""
    same = message.get_content_type() == top.get_content_type()
    if same and top.is_multipart():
        found = [p.get_content_type() for p in message.iter_parts()]
        same = found == [p.get_content_type() for p in top.iter_parts()]
    if not same:
        raise Rejection(554, "5.6.0", "malformed message: its parts read two ways")
