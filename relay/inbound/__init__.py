"""The SMTP edge and everything before a post is believed, then where the post goes.

Owns: the SMTP protocol (protocol.py, replies.py), aiosmtpd's handler hooks (edge.py),
what a client may cost (limits.py, data.py), the inbound checks, what the relay believes
of a verified post (belief.py, freshness.py), its keyword lines (keywords.py) and the
router (router/: a chain of handlers, whose post, which advisory, who gets it).
May import: the packages below it (`relay.outbound`, `relay.app`, `relay.leaks`,
`relay.store`, `relay.policy`, `relay.model`, `relay.core`).

The inbound checks, in the order the edge runs them (admission.py). Before the
signature is checked, only linear work: `check_wire` on the raw DATA bytes (wire.py),
the pre-scan (prescan.py, mime_fields.py: bounds on parts, nesting, lines and header
fields), the top-level reading (shallow.py), then `verify_post` (signature.py) decides
who signed the post and what exactly may be redistributed. Once the signature is good,
`check_structure` (structure.py) parses the post strictly. Each raises `Rejection`,
whose `reply` is the SMTP answer. This module exports those checks only; the edge and
the router, which import them, are imported by their own names.
"""

from relay.inbound.admission import Authenticated, admit, authenticate
from relay.inbound.prescan import Prescan, Shape, prescan
from relay.inbound.signature import VerifiedPost, verify_post
from relay.inbound.structure import check_structure
from relay.inbound.wire import Rejection, check_wire

__all__ = [
    "Authenticated",
    "Prescan",
    "Rejection",
    "Shape",
    "VerifiedPost",
    "admit",
    "authenticate",
    "check_structure",
    "check_wire",
    "prescan",
    "verify_post",
]
