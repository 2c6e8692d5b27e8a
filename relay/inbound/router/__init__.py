"""What a verified post means: whose it is, which advisory it belongs to, who gets it.

The post walks a chain of small handlers (chain.py), one module each, inside the accept
transaction (relay.store.incoming.accept_post), so every change a post makes (a new
advisory, a moved lift, a member's status report) commits together with the post or not
at all. Each handler returns what it did; the walk returns a `RouteReport` built from
those values.

- A sender's post (sender.py) creates its advisory or moves the lift and goes to every
  active member; an `X-Confirm` (confirm.py) makes a change another sender asked for.
- A member's post names its advisory by a keyword line, by replying to a copy the relay
  sent, or by the advisory ID in its subject, or else quotes its embargoed text
  (advisory.py). It may vouch for an application (vouch.py), report the member's status
  (status.py) or ask to share the advisory with someone in the member's team (share.py);
  the posting policy decides where the rest goes (member.py).
- A grant's key may sign one thing only: the acceptance of its terms (acceptance.py).
- On every path, a refusal included, the copies the post's own mail system sent outside
  the list are refused or reported (outside.py).

A refusal that reports a leak is a `ReportedRefusal`: the SMTP edge records its leaks
(and keeps the post as their evidence) after the accept transaction rolled back.
"""

from relay.inbound.router.chain import HANDLERS, is_authorised, route
from relay.inbound.router.context import Context, Router
from relay.inbound.router.results import Handled, ReportedRefusal, RouteReport

__all__ = [
    "HANDLERS",
    "Context",
    "Handled",
    "ReportedRefusal",
    "RouteReport",
    "Router",
    "is_authorised",
    "route",
]
