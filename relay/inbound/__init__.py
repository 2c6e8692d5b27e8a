"""Inbound checks of the SMTP edge, in the order the handler runs them (admission.py).

Before the signature is checked, only linear work: `check_wire` on the raw DATA bytes,
the pre-scan (prescan.py: bounds on parts, nesting, lines and header fields), the
top-level reading (shallow.py), then `verify_post` decides who signed the post and what
exactly may be redistributed. Once the signature is good, `check_structure` parses the
post strictly. Each raises `Rejection`, whose `reply` is the SMTP answer.
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
