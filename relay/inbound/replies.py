"""The SMTP edge's replies, each with an enhanced status code (RFC 3463).

The relay's own replies carry theirs; `with_status` gives aiosmtpd's replies one (and
other words or codes where aiosmtpd's would mislead).
"""

from __future__ import annotations

import re

OK = "250 2.1.0 OK"
RCPT_OK = "250 2.1.5 OK"
QUEUED = "250 2.0.0 Queued as {id}"
NO_SUCH_LIST = "550 5.1.1 No such list here; this server relays for no one"
TOO_MANY_RCPTS = "452 4.5.3 Too many recipients"
TOO_BIG = "552 5.3.4 Message too big for this list"
TRY_LATER = "451 4.3.0 Temporary failure, please try again later"
BUSY = "451 4.3.2 The relay is busy; please try again later"
IDLE = "421 4.4.2 {host} Idle too long; closing the connection"
TOO_MANY_ERRORS = "421 4.7.0 {host} Too many bad commands; closing the connection"
ALREADY_TLS = "503 5.5.1 Already under TLS"

# aiosmtpd's own replies that need other words or codes.
_REWRITES = {
    "552 Error: Too much mail data": TOO_BIG,
    "552 Error: message size exceeds fixed maximum message size": TOO_BIG,
    "500 Line too long (see RFC5321 4.5.3.1.6)": "500 5.5.2 Line too long",
    "502 5.5.1 Too many unrecognized commands, goodbye.": (
        "421 4.7.0 Too many unrecognized commands; closing the connection"
    ),
    # STARTTLS (RFC 3207): the one 220 that is no greeting, and its refusals.
    "220 Ready to start TLS": "220 2.0.0 Ready to start TLS",
    "454 TLS not available": "454 4.7.0 TLS not available",
    "530 Must issue a STARTTLS command first": "530 5.7.0 Must issue a STARTTLS command first",
    "554 Command refused due to lack of security": (
        "554 5.7.0 Command refused due to lack of security"
    ),
}
# The enhanced status code given to a reply of aiosmtpd's that has none.
_STATUS_FOR = {
    "214": "2.0.0",
    "221": "2.0.0",
    "250": "2.0.0",
    "252": "2.5.0",
    "451": "4.3.0",
    "452": "4.3.1",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.7.0",
}
_HAS_STATUS = re.compile(r"\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")


def with_status(reply: str) -> str:
    """`reply` with an enhanced status code; 1xx and 3xx replies and the greeting take none."""
    reply = _REWRITES.get(reply, reply)
    code = reply[:3]
    if not code.isdigit() or code[0] not in "245" or code == "220" or _HAS_STATUS.match(reply):
        return reply
    status = _STATUS_FOR.get(code, f"{code[0]}.0.0")
    if code == "500" and "not recognized" in reply:
        status = "5.5.1"
    return f"{code}{reply[3:4] or ' '}{status} {reply[4:]}".rstrip()
