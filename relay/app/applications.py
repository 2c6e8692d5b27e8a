"""Applications to join the list: reading them, vouches, and the decision.

A distribution applies with the Kubernetes distributors application template: a heading
"Distributors Application for <distribution>", then bold prompts for the security alias
and the policy's criteria 1-8, each followed by the answer with its evidence. People edit
the prompts, so `parse_application` recognises a prompt by its number ("**1. ...**",
"**Criterion 1**") or by the criterion's key words, and keeps each answer as written.
The alias is the policy's criterion 0; it counts as answered when it holds an address.

An active member vouches from the CLI or with a signed post (`X-Vouch: <id>`): both call
`vouch` in their own transaction. `approve` refuses until every criterion is answered and
an active member has vouched; it then creates the member, with a key (vetted by
`relay.admin.add_member`) or without one, in which case the member is unreachable (its
copies are held, never sent in plaintext) until a key is imported. Every change is audited
under `application:<id>`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from relay.app import admin, advisories
from relay.app.admin import MemberView, _member_view
from relay.app.membership import _tell_contact
from relay.app.transactions import in_transaction
from relay.core import addresses
from relay.core.config import Settings
from relay.core.crypto import Crypto
from relay.core.database import Database
from relay.core.errors import RelayError
from relay.core.logs import event
from relay.core.spool import Spool
from relay.model import (
    Advisory,
    AdvisoryState,
    Application,
    ApplicationState,
    AuditEvent,
    Member,
    MemberState,
    utcnow,
)
from relay.store import audit, recipients

log = logging.getLogger("relay.applications")


class ApplicationError(RelayError):
    """A refused application change; the message says why (and is safe to mail back)."""


# What each criterion asks (the policy's wording, shortened) and the words that name it
# in a prompt: a prompt names a criterion when every word of one of its groups is in it.
CRITERIA: dict[str, str] = {
    "0": "an actively monitored security email alias",
    "1": "an actively maintained, CNCF certified distribution",
    "2": "a user base not limited to its own organisation",
    "3": "a public track record of fixing security issues",
    "4": "not a downstream or rebuild of another distribution",
    "5": "a participant and active contributor in the community",
    "6": "accepts the embargo policy",
    "7": "willing to contribute back",
    "8": "someone already on the list vouches for it",
}
_KEYWORDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "0": (("alias",), ("security", "email"), ("security", "contact"), ("security", "address")),
    "1": (("certified",), ("conformance",), ("cncf",), ("actively maintained",)),
    "2": (("user base",), ("userbase",), ("own organi",)),
    "3": (("track record",), ("fixing security",)),
    "4": (("downstream",), ("rebuild",)),
    "5": (("contributor",), ("community",), ("participa",)),
    "6": (("embargo",),),
    "7": (("contribute back",), ("contributing back",)),
    "8": (("vouch",),),
}
# Answers that answer nothing, compared without case, emphasis or a final full stop.
_NOT_ANSWERS = {"", "n/a", "na", "tbd", "tba", "todo", "-", "--", "—", "–", "?"}

_COMMENT = re.compile(r"<!--.*?-->", re.S)
_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.S)
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.+?)\s*#*\s*$")
_TITLE = re.compile(r"distributors?\s+application\s*(?:for\b|:|-|–|—)\s*(.+)", re.I)
# A line that starts, after a list or quote marker, with bold text; then the rest of the line.
_BOLD_LINE = re.compile(r"^ {0,3}(?:[-*+>]\s+|\d+[.)]\s+)?(\*\*|__)(.+?)\1\s*(.*)$")
_BY_NUMBER = (
    re.compile(r"^(?:criteri(?:on|a)|question)\s*#?\s*([0-8])\b", re.I),
    re.compile(r"^\(?([0-8])(?:[.):](?!\d)|$)"),
)
_ADDRESS = re.compile(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_APPLICATION_ID = re.compile(r"^\s*#?\s*(\d{1,9})\s*$")


# Reading an application (pure)


@dataclass(frozen=True)
class ParsedApplication:
    distribution: str | None
    alias: str | None
    answers: dict[str, str]  # each criterion that has a prompt: its answer as written
    answered: list[str]  # criteria "0"-"8" with a real answer
    missing: list[str]  # the others: no prompt, or empty, "N/A", "TBD", "-"


def parse_application(text: str) -> ParsedApplication:
    """Read an application written in the shape of the template; never raises."""
    text = _COMMENT.sub("", text.replace("\r\n", "\n"))
    title = None
    if front := _FRONT_MATTER.match(text):
        text = text[front.end() :]
        for line in front.group(1).splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() == "title" and (named := _TITLE.search(value)):
                title = _distribution(named.group(1).strip().strip("'\""))
    first_h1 = None
    answers: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.split("\n"):
        heading = _HEADING.match(line)
        if heading and title is None and (named := _TITLE.search(heading.group(2))):
            title = _distribution(named.group(1))
            current = None
            continue
        prompt, rest = _prompt(line, heading)
        if prompt is not None:
            current = answers.setdefault(prompt, [])
            if current:
                current.append("")  # the same prompt again: its answers are joined
            current.append(rest)
            continue
        if heading and len(heading.group(1)) == 1 and first_h1 is None:
            first_h1 = _distribution(heading.group(2))
            continue
        if current is not None:
            current.append(line.rstrip())
    texts = {number: "\n".join(lines).strip() for number, lines in sorted(answers.items())}
    answered, missing = assess(texts)
    return ParsedApplication(
        distribution=title or first_h1,
        alias=alias_of(texts.get("0", "")),
        answers=texts,
        answered=answered,
        missing=missing,
    )


def assess(answers: dict[str, str]) -> tuple[list[str], list[str]]:
    """Which criteria are answered and which are missing."""
    answered = [n for n in CRITERIA if _answers(n, answers.get(n, ""))]
    return answered, [n for n in CRITERIA if n not in answered]


def alias_of(answer: str) -> str | None:
    """The first valid email address in the alias answer."""
    for found in _ADDRESS.finditer(answer):
        try:
            return addresses.normalise_address(found.group(0).rstrip("."))
        except RelayError:
            continue
    return None


def describe(numbers: list[str]) -> str:
    """Criteria named with what they ask: '4 (not a downstream ...), 7 (...)'."""
    return ", ".join(f"{n} ({CRITERIA[n]})" for n in numbers)


def _answers(number: str, text: str) -> bool:
    if number == "0":
        return alias_of(text) is not None
    return text.strip().strip("*_`~ .").lower() not in _NOT_ANSWERS


def _prompt(line: str, heading: re.Match[str] | None) -> tuple[str | None, str]:
    """The criterion a prompt line names, and the answer written after it on the line."""
    if heading is not None and len(heading.group(1)) > 1:
        label, rest = heading.group(2), ""
    elif bold := _BOLD_LINE.match(line):
        label, rest = bold.group(2), bold.group(3).lstrip(":").strip()
    else:
        return None, ""
    label = " ".join(label.split()).strip()
    for pattern in _BY_NUMBER:
        if numbered := pattern.match(label):
            return numbered.group(1), rest
    lowered = label.lower()
    named = [
        number
        for number, groups in _KEYWORDS.items()
        if any(all(word in lowered for word in group) for group in groups)
    ]
    return (named[0], rest) if len(named) == 1 else (None, "")


def _distribution(value: str) -> str | None:
    name = " ".join(value.replace("`", "").strip(" *_").split())
    return None if not name or name.startswith("<") else name[:200]


def parse_application_id(value: int | str) -> int:
    """An application id as given on the command line or in `X-Vouch:` ("7" or "#7")."""
    if isinstance(value, int):
        return value
    if found := _APPLICATION_ID.match(value):
        return int(found.group(1))
    raise ApplicationError(f"not an application id: {value!r}")


# Views


@dataclass(frozen=True)
class VouchView:
    member: str
    at: str  # ISO 8601, UTC
    actor: str


@dataclass(frozen=True)
class ApplicationView:
    id: int
    distribution: str
    alias: str | None
    state: str
    answered: list[str]
    missing: list[str]
    vouches: list[VouchView]
    submitted_at: datetime
    submitted_by: str
    decided_at: datetime | None
    decided_by: str | None
    reason: str | None
    answers: dict[str, str]


@dataclass(frozen=True)
class ApplicationDetail:
    application: ApplicationView
    history: list[audit.AuditView]


@dataclass(frozen=True)
class VouchResult:
    application_id: int
    member: str
    vouches: int  # vouches recorded now
    changed: bool  # False when the member had already vouched


@dataclass(frozen=True)
class SentEmbargoed:
    """Posts of an advisory still under embargo queued for a new member."""

    advisory_id: str
    message_ids: list[str]


@dataclass(frozen=True)
class Approval:
    application: ApplicationView
    member: MemberView
    sent: list[SentEmbargoed]
    notice: str | None  # the security contact's notice when the member has no usable key


def _view(a: Application) -> ApplicationView:
    answers = dict(a.answers or {})
    answered, missing = assess(answers)
    return ApplicationView(
        id=a.id,
        distribution=a.distribution,
        alias=a.alias,
        state=a.state,
        answered=answered,
        missing=missing,
        vouches=[VouchView(v["member"], v["at"], v["actor"]) for v in a.vouches or []],
        submitted_at=a.submitted_at,
        submitted_by=a.submitted_by,
        decided_at=a.decided_at,
        decided_by=a.decided_by,
        reason=a.reason,
        answers=answers,
    )


def subject(application_id: int) -> str:
    """The audit subject of an application."""
    return f"application:{application_id}"


def _get(session: Session, application_id: int | str, *, lock: bool = False) -> Application:
    number = parse_application_id(application_id)
    query = select(Application).where(Application.id == number)
    if lock:
        query = query.with_for_update()  # PostgreSQL; SQLite serialises writers anyway
    application = session.execute(query).scalar_one_or_none()
    if application is None:
        raise ApplicationError(f"no application {number}")
    return application


def _open(application: Application) -> Application:
    if application.state != ApplicationState.SUBMITTED:
        raise ApplicationError(f"application {application.id} is already {application.state}")
    return application


def _member(session: Session, address: str) -> Member | None:
    return session.execute(select(Member).where(Member.address == address)).scalar_one_or_none()


# Use-cases


def submit(db: Database, text: str, actor: str, source: str | None = None) -> ApplicationView:
    """Record an application as read by `parse_application`, audited; criteria may be missing
    (it cannot be approved until they are answered) but the distribution must be named."""
    parsed = parse_application(text)
    if parsed.distribution is None:
        raise ApplicationError(
            "the application has no heading naming the distribution "
            "('# Distributors Application for NAME')"
        )
    if not parsed.answers:
        raise ApplicationError(
            "no prompt of the application template found (the security alias and criteria 1-8)"
        )
    with db.transaction() as session:
        if parsed.alias is not None:
            member = _member(session, parsed.alias)
            if member is not None and member.state != MemberState.REMOVED:
                raise ApplicationError(f"{parsed.alias} is already a member ({member.state})")
            pending = session.execute(
                select(Application.id).where(
                    Application.alias == parsed.alias,
                    Application.state == ApplicationState.SUBMITTED,
                )
            ).scalar()
            if pending is not None:
                raise ApplicationError(
                    f"application {pending} for {parsed.alias} is still open; approve or "
                    "reject it first"
                )
        application = Application(
            distribution=parsed.distribution,
            alias=parsed.alias,
            answers=parsed.answers,
            state=ApplicationState.SUBMITTED,
            submitted_at=utcnow(),
            submitted_by=actor,
            vouches=[],
        )
        session.add(application)
        session.flush()
        audit.record(
            session,
            actor,
            "application.submitted",
            subject(application.id),
            new=ApplicationState.SUBMITTED.value,
            distribution=parsed.distribution,
            alias=parsed.alias,
            missing=parsed.missing,
            source=source,
        )
        view = _view(application)
    event(log, "application.submitted", id=view.id, missing=len(view.missing))
    return view


def vouch(
    session: Session, application_id: int | str, member_address: str, actor: str
) -> VouchResult:
    """Record in the caller's transaction that an active member vouches for an application.

    Called by the CLI and by a member's signed post with `X-Vouch: <id>`. Refuses unknown,
    suspended and removed members; a second vouch by the same member changes nothing."""
    application = _open(_get(session, application_id, lock=True))
    address = addresses.normalise_address(member_address)
    member = _member(session, address)
    if member is None:
        raise ApplicationError(f"{address} is not a member; only active members may vouch")
    if member.state != MemberState.ACTIVE:
        raise ApplicationError(f"{address} is {member.state}; only active members may vouch")
    vouches = list(application.vouches or [])
    if any(v["member"] == address for v in vouches):
        return VouchResult(application.id, address, len(vouches), changed=False)
    vouches.append({"member": address, "at": utcnow().isoformat(), "actor": actor})
    application.vouches = vouches  # a new list, so the JSON column is written
    audit.record(
        session,
        actor,
        "application.vouched",
        subject(application.id),
        old=len(vouches) - 1,
        new=len(vouches),
        member=address,
    )
    event(log, "application.vouched", id=application.id, member=address)
    return VouchResult(application.id, address, len(vouches), changed=True)


def vouch_application(
    db: Database, application_id: int | str, member_address: str, actor: str
) -> VouchResult:
    with db.transaction() as session:
        return vouch(session, application_id, member_address, actor)


def _refusals(session: Session, application: Application) -> list[str]:
    """Why the application cannot be approved yet; empty when it can."""
    problems = []
    _, missing = assess(application.answers or {})
    if missing:
        problems.append(f"criteria not answered: {describe(missing)}")
    vouchers = [v["member"] for v in application.vouches or []]
    active = (
        session.execute(
            select(Member.address).where(
                Member.address.in_(vouchers), Member.state == MemberState.ACTIVE
            )
        )
        .scalars()
        .all()
    )
    if not active:
        since = f" ({', '.join(vouchers)} no longer active)" if vouchers else ""
        problems.append(
            f"no vouch from an active member{since}; record one with "
            f"'relay application vouch {application.id} --by MEMBER'"
        )
    return problems


def approve(
    db: Database,
    crypto: Crypto,
    settings: Settings,
    spool: Spool,
    application_id: int | str,
    actor: str,
    *,
    key_data: bytes | None = None,
    send_active: bool = False,
) -> Approval:
    """Create the member an application asks for, once it may be approved.

    With `key_data` the member is added by `admin.add_member` (keys vetted first, so a bad
    key changes nothing); without, it is added with no key and is unreachable until
    `relay key import`, and the security contact is told. With `send_active` it is also
    queued every post of the advisories still under embargo."""
    with db.transaction() as session:
        application = _open(_get(session, application_id))
        if problems := _refusals(session, application):
            raise ApplicationError(
                f"application {application.id} cannot be approved: " + "; ".join(problems)
            )
        alias, name = application.alias, application.distribution
        if alias is None:  # cannot happen with criterion 0 answered; refuse rather than guess
            raise ApplicationError(f"application {application.id} names no security alias")
        existing = _member(session, alias)
        if existing is not None and existing.state != MemberState.REMOVED:
            raise ApplicationError(f"{alias} is already a member ({existing.state})")
    if key_data is not None:
        admin.add_member(db, crypto, settings, alias, name, key_data, actor)

    def work(session: Session, spool: Spool) -> Approval:
        application = _open(_get(session, application_id, lock=True))
        member = _member(session, alias)
        why = f"application {application.id}"
        if key_data is None:
            if member is not None and member.state != MemberState.REMOVED:
                raise ApplicationError(f"{alias} became a member meanwhile ({member.state})")
            old = None if member is None else member.state
            if member is None:
                member = Member(address=alias, name=name, state=MemberState.ACTIVE)
                session.add(member)
            member.name, member.state = name, MemberState.ACTIVE  # a removed one keeps its keys
            audit.record(session, actor, "member.added", alias, old=old, new="active", source=why)
        if member is None:
            raise ApplicationError(f"{alias} was removed from the database meanwhile")
        member.criteria = {n: application.answers[n] for n in CRITERIA}
        member.vouched_by = application.vouches[0]["member"]
        if not member.domains:
            member.domains = [alias.rpartition("@")[2]]
        session.flush()
        view = _member_view(crypto, member)
        notice = None
        if not view.usable:
            notice = _tell_contact(session, spool, settings, [alias], f"approval of {why}")
        sent = queue_embargoed(session, member, settings.list.domain, actor) if send_active else []
        application.state = ApplicationState.APPROVED
        application.decided_at, application.decided_by = utcnow(), actor
        audit.record(
            session,
            actor,
            "application.approved",
            subject(application.id),
            old=ApplicationState.SUBMITTED.value,
            new=ApplicationState.APPROVED.value,
            member=alias,
            keys=view.fingerprints,
            vouched_by=[v["member"] for v in application.vouches],
            sent_embargoed={s.advisory_id: len(s.message_ids) for s in sent},
        )
        return Approval(_view(application), view, sent, notice)

    done = in_transaction(db, spool, work)
    event(
        log,
        "application.approved",
        id=done.application.id,
        member=alias,
        usable=done.member.usable,
        sent=sum(len(s.message_ids) for s in done.sent),
    )
    return done


def queue_embargoed(
    session: Session, member: Member, list_domain: str, actor: str
) -> list[SentEmbargoed]:
    """Queue for a new member its backlog (relay/store/recipients.py) of the advisories
    still under embargo, in the caller's transaction, audited under each advisory."""
    embargoed = session.execute(
        select(Advisory.id).where(Advisory.state == AdvisoryState.EMBARGOED)
    ).scalars()
    queued = recipients.queue_backlog(
        session, list(embargoed), member.address, list_domain, utcnow(), member_id=member.id
    )
    for advisory_id, message_ids in queued.items():
        audit.record(
            session,
            actor,
            "advisory.sent_to_new_member",
            advisories.subject(advisory_id),
            member=member.address,
            messages=message_ids,
        )
    return [SentEmbargoed(a, m) for a, m in queued.items()]


def reject(db: Database, application_id: int | str, actor: str, reason: str) -> ApplicationView:
    """Close an application without a member, audited with the reason."""
    reason = " ".join(reason.split())
    if not reason:
        raise ApplicationError("give a reason (it is kept in the audit trail)")
    with db.transaction() as session:
        application = _open(_get(session, application_id, lock=True))
        application.state = ApplicationState.REJECTED
        application.decided_at, application.decided_by = utcnow(), actor
        application.reason = reason
        audit.record(
            session,
            actor,
            "application.rejected",
            subject(application.id),
            old=ApplicationState.SUBMITTED.value,
            new=ApplicationState.REJECTED.value,
            reason=reason,
        )
        view = _view(application)
    event(log, "application.rejected", id=view.id)
    return view


def list_applications(db: Database) -> list[ApplicationView]:
    """Every application, newest first."""
    with db.transaction() as session:
        rows = session.execute(select(Application).order_by(Application.id.desc())).scalars()
        return [_view(a) for a in rows]


def application_detail(db: Database, application_id: int | str) -> ApplicationDetail:
    """One application with its answers, vouches and history."""
    with db.transaction() as session:
        application = _get(session, application_id)
        rows = session.execute(
            select(AuditEvent)
            .where(AuditEvent.subject == subject(application.id))
            .order_by(AuditEvent.at, AuditEvent.id)
        ).scalars()
        return ApplicationDetail(_view(application), [audit.audit_view(e) for e in rows])
