"""Inbound checks of the SMTP edge, in the order the handler runs them.

`check_wire` on the raw DATA bytes, `check_structure` to parse them strictly,
then `verify_post` to decide who signed the post and what exactly may be
redistributed. Each raises `Rejection`, whose `reply` is the SMTP answer.
"""

from relay.inbound.signature import VerifiedPost, verify_post
from relay.inbound.structure import check_structure
from relay.inbound.wire import Rejection, check_wire

__all__ = ["Rejection", "VerifiedPost", "check_structure", "check_wire", "verify_post"]
