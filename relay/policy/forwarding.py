"""Onward forwarding: may this address receive this advisory now? The `[forwarding]` table.

Before the lift, list information may reach only the list's members, its authorised
senders and people a member shared it with under the same terms (a per-advisory grant);
after the lift the restriction ends. For each recipient of a message the relay handles,
`decide` runs a short chain of rules and returns one of a closed set of verdicts:
deliver, block (that recipient gets nothing), or flag (delivery goes ahead as the policy
allows and a leak report is raised), with the rule that decided and why.

This is policy only: a pure function of a frozen Context and the list's policy, with no
I/O, no database and no clock (callers pass `now`). It fails closed: a rule that raises,
or a recipient no rule speaks for, is blocked. Who a recipient is comes from
relay/store/parties.py. Callers: the post router (relay/inbound/router/) for the addresses a post
names in To/Cc and for the person an `X-Share` names; the dispatcher (relay/runners/dispatcher.py)
for every copy the relay itself is about to send, for the copy's own advisory and for
every embargoed advisory its text quotes.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from relay.core.errors import RelayError
from relay.core.times import format_when


class Verdict(StrEnum):
    DELIVER = "deliver"
    BLOCK = "block"
    FLAG = "flag"  # delivery goes ahead as the policy allows, and a leak report is raised


class Kind(StrEnum):
    """Who a recipient is to the list, as the caller found out from the database."""

    MEMBER = "member"
    SENDER = "sender"  # an authorised (SRC) sender or the security contact
    GRANT_HOLDER = "grant_holder"  # accepted the terms for this advisory; grant not revoked
    PENDING_GRANT = "pending_grant"  # a member shared the advisory; terms not yet accepted
    MEMBER_DOMAIN = "member_domain"  # in a member's declared domain, but holds no grant
    OUTSIDER = "outsider"


@dataclass(frozen=True)
class Recipient:
    address: str
    kind: Kind
    # Named only in the post's To/Cc: the sender's own mail system delivers to it, not the
    # relay, so it cannot be blocked, only reported.
    visible_only: bool = False


@dataclass(frozen=True)
class Context:
    """Everything a rule may look at; `lift_at` is None while no lift time is set."""

    advisory_id: str
    embargoed: bool
    lift_at: datetime | None
    recipient: Recipient
    now: datetime
    # The message is the terms of the recipient's own pending grant, which name the
    # advisory and nothing of it: the one thing a pending grant may receive.
    terms: bool = False


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    rule: str  # the deciding rule's name, as stored in the audit row
    reason: str  # fit to show an admin: names the advisory and the lift time
    evaluated: tuple[str, ...]  # the rules run, in order, the deciding one last
    context: Context


OutsiderAction = Literal["block", "flag"]
MemberDomains = Literal["grant-only", "allow"]
ExternalCc = Literal["distribute-and-report", "refuse"]


@dataclass(frozen=True)
class ForwardingPolicy:
    outsiders: OutsiderAction
    member_domains: MemberDomains
    external_cc: ExternalCc


# The built-in default: onward attempts are blocked and reported.
DEFAULT = ForwardingPolicy(
    outsiders="block", member_domains="grant-only", external_cc="distribute-and-report"
)

Rule = Callable[[Context, ForwardingPolicy], "Decision | None"]


# --- rules: each answers one question, or returns None for "no opinion" ---------------------


def _say(ctx: Context, verdict: Verdict, reason: str) -> Decision:
    # `decide` fills in the rule's name and the rules run; a rule only states its verdict.
    return Decision(verdict, "", reason, (), ctx)


def _until(ctx: Context) -> str:
    if ctx.lift_at is None:
        return "the lift (no lift time is set yet)"
    return f"the lift at {format_when(ctx.lift_at)}"


def lifted(ctx: Context, policy: ForwardingPolicy) -> Decision | None:
    if ctx.embargoed:
        return None
    if ctx.lift_at is None:
        return _say(ctx, Verdict.DELIVER, f"{ctx.advisory_id} is not under embargo")
    when = format_when(ctx.lift_at)
    if ctx.lift_at > ctx.now:
        return _say(
            ctx,
            Verdict.DELIVER,
            f"the embargo on {ctx.advisory_id} was lifted early (planned for {when})",
        )
    return _say(ctx, Verdict.DELIVER, f"the embargo on {ctx.advisory_id} was lifted at {when}")


def list_party(ctx: Context, policy: ForwardingPolicy) -> Decision | None:
    who = {Kind.MEMBER: "a list member", Kind.SENDER: "an authorised sender"}.get(
        ctx.recipient.kind
    )
    if who is None:
        return None
    return _say(
        ctx,
        Verdict.DELIVER,
        f"{ctx.recipient.address} is {who}; {ctx.advisory_id} is embargoed until {_until(ctx)}",
    )


def grant(ctx: Context, policy: ForwardingPolicy) -> Decision | None:
    if ctx.recipient.kind != Kind.GRANT_HOLDER:
        return None
    return _say(
        ctx,
        Verdict.DELIVER,
        f"{ctx.recipient.address} accepted the terms and holds a need-to-know grant for "
        f"{ctx.advisory_id}, embargoed until {_until(ctx)}",
    )


def terms(ctx: Context, policy: ForwardingPolicy) -> Decision | None:
    if ctx.recipient.kind != Kind.PENDING_GRANT or not ctx.terms:
        return None
    return _say(
        ctx,
        Verdict.DELIVER,
        f"{ctx.recipient.address} was offered a grant for {ctx.advisory_id} and receives only "
        f"its terms until it accepts them; embargoed until {_until(ctx)}",
    )


def member_domain(ctx: Context, policy: ForwardingPolicy) -> Decision | None:
    # "grant-only": no opinion, so the address is judged as an outsider further down.
    if ctx.recipient.kind != Kind.MEMBER_DOMAIN or policy.member_domains != "allow":
        return None
    return _say(
        ctx,
        Verdict.DELIVER,
        f"{ctx.recipient.address} is in a member's domain, which this list allows to receive "
        f"{ctx.advisory_id} before {_until(ctx)}",
    )


def visible_only(ctx: Context, policy: ForwardingPolicy) -> Decision | None:
    if not ctx.recipient.visible_only:
        return None
    post = {
        "refuse": "the list's policy refuses the post",
        "distribute-and-report": "the list's policy still distributes the post to the list",
    }[policy.external_cc]
    return _say(
        ctx,
        Verdict.FLAG,
        f"{ctx.recipient.address} appears only in the post's To/Cc: the sender's own mail "
        f"system, not the relay, sent it {ctx.advisory_id} before {_until(ctx)}; "
        f"reported as a leak, and {post}",
    )


def outsider(ctx: Context, policy: ForwardingPolicy) -> Decision | None:
    address = ctx.recipient.address
    if ctx.recipient.kind == Kind.OUTSIDER:
        who = f"{address} is not a member, an authorised sender, nor holder of a grant for"
    elif ctx.recipient.kind == Kind.MEMBER_DOMAIN:
        who = f"{address} is in a member's domain but holds no grant for"
    elif ctx.recipient.kind == Kind.PENDING_GRANT:
        who = f"{address} has not yet accepted the terms of its grant for"
    else:
        return None
    outcome = {
        "block": "blocked",
        "flag": "delivered as the list's policy allows, and reported as a leak",
    }[policy.outsiders]
    verdict = {"block": Verdict.BLOCK, "flag": Verdict.FLAG}[policy.outsiders]
    return _say(ctx, verdict, f"{who} {ctx.advisory_id} before {_until(ctx)}; {outcome}")


# Permissions first, then what the relay cannot stop, then the restriction.
RULES: tuple[Rule, ...] = (
    lifted,
    list_party,
    grant,
    terms,
    member_domain,
    visible_only,
    outsider,
)


def decide(ctx: Context, policy: ForwardingPolicy, rules: Iterable[Rule] = RULES) -> Decision:
    """The first rule with an opinion decides; failing or silent rules mean BLOCK."""
    evaluated: list[str] = []
    for rule in rules:
        name = rule.__name__
        evaluated.append(name)
        try:
            decision = rule(ctx, policy)
        except Exception as exc:
            return Decision(
                Verdict.BLOCK,
                name,
                f"rule {name} failed ({type(exc).__name__}: {exc}); "
                f"{ctx.recipient.address} is blocked from {ctx.advisory_id} to fail closed",
                tuple(evaluated),
                ctx,
            )
        if decision is not None:
            return replace(decision, rule=name, evaluated=tuple(evaluated))
    return Decision(
        Verdict.BLOCK,
        "default",
        f"no rule decided; {ctx.recipient.address} is blocked from {ctx.advisory_id} "
        "to fail closed",
        tuple(evaluated),
        ctx,
    )


def decide_all(
    advisory_id: str,
    *,
    embargoed: bool,
    lift_at: datetime | None,
    recipients: Iterable[Recipient],
    now: datetime,
    policy: ForwardingPolicy = DEFAULT,
) -> list[Decision]:
    """One Decision per recipient of one message, in the recipients' order."""
    return [
        decide(Context(advisory_id, embargoed, lift_at, recipient, now), policy)
        for recipient in recipients
    ]


def post_with_external_copies(policy: ForwardingPolicy) -> Literal["distribute", "refuse"]:
    """What happens to a post whose To/Cc name someone the relay may not serve."""
    return "refuse" if policy.external_cc == "refuse" else "distribute"


def _printable(text: str) -> str:
    # Addresses come from the mail: a CR or LF in a reply line would forge the next reply.
    return "".join(c if c.isprintable() else "?" for c in text)


def block_reply(decision: Decision) -> str:
    """The SMTP reply for a blocked recipient, or for a refused post's external copy."""
    refused_copy = decision.verdict == Verdict.FLAG and decision.rule == "visible_only"
    if decision.verdict != Verdict.BLOCK and not refused_copy:
        raise ValueError(f"no SMTP refusal for a {decision.verdict} decision ({decision.rule})")
    ctx = decision.context
    when = "its lift" if ctx.lift_at is None else format_when(ctx.lift_at)
    return (
        f"550 5.7.1 <{_printable(ctx.recipient.address)}> may not receive "
        f"{_printable(ctx.advisory_id)} before {when}"
    )


# --- the [forwarding] table of a policy file ------------------------------------------------


class _Forwarding(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # A key left out keeps the built-in default, which blocks.
    outsiders: OutsiderAction = DEFAULT.outsiders
    member_domains: MemberDomains = DEFAULT.member_domains
    external_cc: ExternalCc = DEFAULT.external_cc


def load_forwarding(path: Path | None) -> ForwardingPolicy:
    """The `[forwarding]` rules of a policy file; no file or no table means DEFAULT."""
    if path is None:
        return DEFAULT
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RelayError(f"policy file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RelayError(f"cannot read policy file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RelayError(f"{path}: not valid TOML: {exc}") from None
    table = raw.get("forwarding")
    if table is None:
        return DEFAULT
    if not isinstance(table, dict):
        raise RelayError(f"{path}: invalid policy: forwarding: expected a table")
    try:
        rules = _Forwarding.model_validate(table)
    except ValidationError as exc:
        problems = "; ".join(
            f"forwarding.{'.'.join(str(p) for p in e['loc'])}: "
            + ("unknown key" if e["type"] == "extra_forbidden" else e["msg"])
            for e in exc.errors()
        )
        raise RelayError(f"{path}: invalid policy: {problems}") from None
    return ForwardingPolicy(rules.outsiders, rules.member_domains, rules.external_cc)
