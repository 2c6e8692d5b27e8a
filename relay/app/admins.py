"""The console's administrators: accounts with passwords, API tokens, login sessions and
the throttling of failed logins (tables in relay/model/admins.py).

Secrets are shown once and never stored: a password as its argon2id hash, a token and a
session's cookie value as their SHA-256. Each change is one transaction with its audit
row; no row's detail holds a password or a secret. Times are UTC; `now` may be given
(tests, or a caller that already read the clock).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from relay.core.config import WebSettings
from relay.core.database import Database, rowcount
from relay.core.errors import RelayError
from relay.core.logs import event
from relay.model import Admin, AdminSession, AdminToken, LoginFailure, utcnow
from relay.model.admins import NAME_LENGTH
from relay.store import audit

log = logging.getLogger("relay.admins")

MIN_PASSWORD = 12
TOKEN_PREFIX = "er_"
_NAME = re.compile(rf"[A-Za-z0-9._-]{{1,{NAME_LENGTH}}}")
_CLIENT_LENGTH = 64
_LABEL_LENGTH = 200
WRONG = "wrong name or password"


class AdminError(RelayError):
    """An unknown name or token, a name taken, a weak password, ..."""


class LoginRefused(AdminError):
    """Wrong name or password: one message for both, so a name's existence stays hidden."""


class LoginThrottled(AdminError):
    """Too many failed logins for the name or the client; try again after `retry_after`."""

    def __init__(self, retry_after: timedelta) -> None:
        seconds = max(1, int(retry_after.total_seconds() + 0.999))
        super().__init__(f"too many failed logins; try again in {seconds} seconds")
        self.retry_after = retry_after


@dataclass(frozen=True)
class AdminView:
    name: str
    created_at: datetime
    created_by: str
    last_login_at: datetime | None
    tokens: int  # live (unrevoked) tokens


@dataclass(frozen=True)
class TokenView:
    id: int
    admin: str
    label: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class WebSession:
    admin: str
    csrf: str
    expires_at: datetime  # the earlier of the idle end and the absolute end


# Passwords. argon2id (RFC 9106) is memory-hard: each guess at a stolen hash costs tens of
# MiB as well as time, which GPUs and ASICs cannot cheapen the way they do for fast hashes.
# argon2-cffi's defaults are RFC 9106's low-memory profile; a hash made with older
# parameters is replaced at the next login.
_hasher = PasswordHasher()


@cache
def _dummy_hash() -> str:
    """A hash to verify against for an unknown name, so it costs what a known one does."""
    return _hasher.hash(secrets.token_urlsafe(16))


def _check_password(name: str, password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AdminError(f"the password is too short: at least {MIN_PASSWORD} characters")
    if password.casefold() == name.casefold():
        raise AdminError("the password must not be the admin's name")


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


# Tokens and session secrets are 32 random bytes: with that much entropy no guessing
# helps, so a fast hash (SHA-256) stores them safely and lets a request find its row by
# the hash, an index lookup rather than a comparison against every secret.


def _new_secret() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


# Accounts


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise AdminError(
            f"not an admin name: {name!r} (1 to {NAME_LENGTH} letters, digits, '.', '_' or '-')"
        )
    return name


def _find(session: Session, name: str) -> Admin | None:
    return session.scalar(select(Admin).where(Admin.name == name, Admin.removed_at.is_(None)))


def _get(session: Session, name: str) -> Admin:
    admin = _find(session, name)
    if admin is None:
        raise AdminError(f"no admin {name!r}")
    return admin


def _live_tokens(session: Session, admin_id: int) -> int:
    query = select(func.count()).where(
        AdminToken.admin_id == admin_id, AdminToken.revoked_at.is_(None)
    )
    return session.scalar(query) or 0


def _admin_view(session: Session, admin: Admin) -> AdminView:
    return AdminView(
        name=admin.name,
        created_at=admin.created_at,
        created_by=admin.created_by,
        last_login_at=admin.last_login_at,
        tokens=_live_tokens(session, admin.id),
    )


def add_admin(db: Database, name: str, password: str, actor: str) -> AdminView:
    """A new administrator, or a removed one's name again with a new password."""
    check_name(name)
    _check_password(name, password)
    password_hash = _hasher.hash(password)
    with db.transaction() as session:
        admin = session.scalar(select(Admin).where(Admin.name == name))
        if admin is not None and admin.removed_at is None:
            raise AdminError(f"admin {name!r} already exists")
        now = utcnow()
        if admin is None:
            admin = Admin(name=name)
            session.add(admin)
        admin.password_hash = password_hash
        admin.created_at, admin.created_by = now, actor
        admin.last_login_at = admin.removed_at = admin.removed_by = None
        session.flush()
        audit.record(session, actor, "admin.added", f"admin:{name}")
        view = _admin_view(session, admin)
    event(log, "admin.added", admin=name)
    return view


def remove_admin(db: Database, name: str, actor: str) -> None:
    """Remove an administrator: its tokens are revoked and its sessions ended at once."""
    with db.transaction() as session:
        admin = _get(session, name)
        now = utcnow()
        admin.removed_at, admin.removed_by = now, actor
        revoked = session.execute(
            update(AdminToken)
            .where(AdminToken.admin_id == admin.id, AdminToken.revoked_at.is_(None))
            .values(revoked_at=now, revoked_by=actor)
        )
        ended = session.execute(
            update(AdminSession)
            .where(AdminSession.admin_id == admin.id, AdminSession.ended_at.is_(None))
            .values(ended_at=now)
        )
        audit.record(
            session,
            actor,
            "admin.removed",
            f"admin:{name}",
            tokens_revoked=rowcount(revoked),
            sessions_ended=rowcount(ended),
        )
    event(log, "admin.removed", admin=name)


def list_admins(db: Database) -> list[AdminView]:
    with db.transaction() as session:
        admins = session.scalars(
            select(Admin).where(Admin.removed_at.is_(None)).order_by(Admin.name)
        )
        return [_admin_view(session, a) for a in admins]


# Tokens


def _token_view(token: AdminToken) -> TokenView:
    return TokenView(
        id=token.id,
        admin=token.admin.name,
        label=token.label,
        created_at=token.created_at,
        last_used_at=token.last_used_at,
        revoked_at=token.revoked_at,
    )


def issue_token(
    db: Database, name: str, actor: str, label: str | None = None
) -> tuple[TokenView, str]:
    """A new API token for `name`: its view and the secret, which is shown only now."""
    label = " ".join(label.split()) if label else None
    if label and len(label) > _LABEL_LENGTH:
        raise AdminError(f"the label is too long: at most {_LABEL_LENGTH} characters")
    if label and not label.isprintable():
        raise AdminError("the label must be printable text")
    secret = TOKEN_PREFIX + _new_secret()
    with db.transaction() as session:
        admin = _get(session, name)
        token = AdminToken(
            admin=admin, token_hash=_digest(secret), label=label or None, created_by=actor
        )
        session.add(token)
        session.flush()
        audit.record(session, actor, "token.issued", f"token:{token.id}", admin=name, label=label)
        view = _token_view(token)
    event(log, "token.issued", admin=name, token=view.id)
    return view, secret


def list_tokens(db: Database, name: str | None = None) -> list[TokenView]:
    """Every token (a removed admin's too, revoked), or those of one current admin."""
    with db.transaction() as session:
        query = select(AdminToken).join(AdminToken.admin).order_by(AdminToken.id)
        if name is not None:
            query = query.where(AdminToken.admin_id == _get(session, name).id)
        return [_token_view(t) for t in session.scalars(query)]


def revoke_token(db: Database, token_id: int, actor: str) -> TokenView:
    with db.transaction() as session:
        token = session.get(AdminToken, token_id)
        if token is None:
            raise AdminError(f"no token {token_id}")
        if token.revoked_at is not None:
            raise AdminError(f"token {token_id} is already revoked")
        token.revoked_at, token.revoked_by = utcnow(), actor
        audit.record(session, actor, "token.revoked", f"token:{token_id}", admin=token.admin.name)
        view = _token_view(token)
    event(log, "token.revoked", admin=view.admin, token=token_id)
    return view


def token_admin(db: Database, secret: str, now: datetime | None = None) -> str | None:
    """The admin a live token belongs to (and its use recorded), else None."""
    with db.transaction() as session:
        token = session.scalar(select(AdminToken).where(AdminToken.token_hash == _digest(secret)))
        if token is None or token.revoked_at is not None or token.admin.removed_at is not None:
            return None
        token.last_used_at = now or utcnow()
        return token.admin.name


# Logins and sessions


def _failures(
    session: Session, name: str, client: str, settings: WebSettings, now: datetime
) -> timedelta | None:
    """How long until a login may be tried, if the name or the client has used up its
    failed attempts within the window; None when it may be tried now."""
    since = now - settings.login_window
    waits = []
    for column, value in ((LoginFailure.name, name), (LoginFailure.client, client)):
        times = session.scalars(
            select(LoginFailure.at)
            .where(column == value, LoginFailure.at > since)
            .order_by(LoginFailure.at)
        ).all()
        if len(times) >= settings.login_attempts:
            # The attempt whose expiry brings the count below the limit: the oldest
            # counted one when exactly at the limit.
            freed_by = times[len(times) - settings.login_attempts]
            waits.append(freed_by + settings.login_window - now)
    return max(waits) if waits else None


# When each name's throttling was last audited, in this process: one row per name and
# window is the evidence; a client hammering a locked name would otherwise write a row
# (and take the audit chain's lock) per request. Each attempt is still logged.
_THROTTLE_AUDITED: dict[tuple[str, str], datetime] = {}  # (database, subject) -> when
_THROTTLE_AUDITED_MAX = 10_000


def _throttle_recorded(db: Database, subject: str, settings: WebSettings, now: datetime) -> bool:
    key = (db.url, subject)
    last = _THROTTLE_AUDITED.get(key)
    if last is not None and now - last < settings.login_window:
        return True
    if len(_THROTTLE_AUDITED) >= _THROTTLE_AUDITED_MAX:
        _THROTTLE_AUDITED.clear()
    _THROTTLE_AUDITED[key] = now
    return False


def log_in(
    db: Database,
    name: str,
    password: str,
    client: str,
    settings: WebSettings,
    now: datetime | None = None,
) -> tuple[str, WebSession]:
    """A new session for the right name and password: the secret for the cookie, and the
    session. Raises LoginThrottled (before the password is looked at) while the name or
    the client has too many recent failures, LoginRefused for a wrong name or password."""
    now = now or utcnow()
    typed = name[:NAME_LENGTH]
    client = client[:_CLIENT_LENGTH]
    subject = f"admin:{typed}"
    with db.transaction() as session:
        session.execute(delete(LoginFailure).where(LoginFailure.at <= now - settings.login_window))
        wait = _failures(session, typed, client, settings, now)
        if wait is not None and not _throttle_recorded(db, subject, settings, now):
            audit.record(session, "relay", "login.throttled", subject, client=client)
        admin = _find(session, name) if _NAME.fullmatch(name) else None
        stored = admin.password_hash if admin is not None else None
    if wait is not None:
        event(log, "login.throttled", admin=typed, client=client)
        raise LoginThrottled(wait)
    # Verified outside a transaction (it takes a while); an unknown name costs the same.
    ok = _verify(stored or _dummy_hash(), password) and stored is not None
    with db.transaction() as session:
        admin = _find(session, name) if ok else None
        if admin is None or admin.password_hash != stored:
            session.add(LoginFailure(name=typed, client=client, at=now))
            audit.record(session, "relay", "login.refused", subject, client=client)
            refused = True
        else:
            refused = False
            session.execute(delete(LoginFailure).where(LoginFailure.name == name))
            if _hasher.check_needs_rehash(admin.password_hash):
                admin.password_hash = _hasher.hash(password)
            admin.last_login_at = now
            secret = _new_secret()
            row = AdminSession(
                admin=admin,
                secret_hash=_digest(secret),
                csrf=secrets.token_urlsafe(32),
                client=client,
                created_at=now,
                last_seen_at=now,
            )
            session.add(row)
            audit.record(session, audit.web_actor(name), "login", subject, client=client)
            web = _web_session(row, settings)
    if refused:
        event(log, "login.refused", admin=typed, client=client)
        raise LoginRefused(WRONG)
    event(log, "login", admin=name, client=client)
    return secret, web


def _expires_at(row: AdminSession, settings: WebSettings) -> datetime:
    return min(row.last_seen_at + settings.session_idle, row.created_at + settings.session_max)


def _web_session(row: AdminSession, settings: WebSettings) -> WebSession:
    return WebSession(admin=row.admin.name, csrf=row.csrf, expires_at=_expires_at(row, settings))


def session_of(
    db: Database, secret: str, settings: WebSettings, now: datetime | None = None
) -> WebSession | None:
    """The live session a cookie names, its idle time restarted; None when the cookie
    names none, or one that ended or expired."""
    now = now or utcnow()
    with db.transaction() as session:
        row = session.scalar(
            select(AdminSession).where(
                AdminSession.secret_hash == _digest(secret), AdminSession.ended_at.is_(None)
            )
        )
        if row is None or row.admin.removed_at is not None:
            return None
        if now >= _expires_at(row, settings):
            row.ended_at = now
            return None
        row.last_seen_at = max(row.last_seen_at, now)
        return _web_session(row, settings)


def log_out(db: Database, secret: str, actor: str) -> None:
    """End the session a cookie names; nothing to do when it already ended."""
    with db.transaction() as session:
        row = session.scalar(
            select(AdminSession).where(
                AdminSession.secret_hash == _digest(secret), AdminSession.ended_at.is_(None)
            )
        )
        if row is None:
            return
        row.ended_at = utcnow()
        audit.record(session, actor, "logout", f"admin:{row.admin.name}", client=row.client)
    event(log, "logout", admin=row.admin.name)
