"""The console's administrators end to end: `relay admin ...` and relay/app/admins.py on
the real database (SQLite, and PostgreSQL with RELAY_TEST_DATABASE=postgresql), with real
argon2id hashes, tokens, sessions and throttled logins."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner
from sqlalchemy import select, text, update

from relay.app import admins
from relay.cli.root import cli
from relay.core.config import WebSettings
from relay.model import Admin, AdminSession, AdminToken, AuditEvent, LoginFailure
from relay.store import audit
from tests.support.cli import CliRelay, set_up
from tests.support.keys import KeyFactory

PASSWORD = "correct horse battery"
T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
CLIENT = "192.0.2.7"


@pytest.fixture
def relay(tmp_path: Path, keys: KeyFactory) -> Iterator[CliRelay]:
    home = set_up(tmp_path, keys, [])
    yield home
    home.db.dispose()


@pytest.fixture
def web(relay: CliRelay) -> WebSettings:
    return relay.settings.web  # the defaults: 5 failures in 15m; idle 30m, at most 12h


def _password_file(tmp_path: Path, password: str = PASSWORD) -> str:
    path = tmp_path / "password"
    path.write_text(password + "\n", encoding="utf-8")
    return str(path)


def _add(relay: CliRelay, tmp_path: Path, name: str, password: str = PASSWORD) -> None:
    relay("admin", "add", name, "--password-file", _password_file(tmp_path, password))


def _actions(relay: CliRelay) -> list[tuple[str, str]]:
    with relay.db.transaction() as s:
        rows = s.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
        return [(e.action, e.subject) for e in rows if e.subject.startswith(("admin:", "token:"))]


def _all_values(relay: CliRelay, table: str) -> list[str]:
    with relay.db.engine.connect() as conn:
        return [str(v) for row in conn.execute(text(f"SELECT * FROM {table}")) for v in row]


def test_commands_have_help() -> None:
    for command in ["add", "list", "remove", "token", "tokens", "revoke"]:
        result = CliRunner().invoke(cli, ["admin", command, "--help"])
        assert result.exit_code == 0 and "Usage: " in result.stdout, command


def test_add_list_remove_and_add_again(relay: CliRelay, tmp_path: Path) -> None:
    assert relay("admin", "list").stdout.strip() == "Administrators: none"
    out = relay("admin", "add", "alice", "--password-file", _password_file(tmp_path)).stdout
    assert out == "admin added: alice\n"
    _add(relay, tmp_path, "bob.ops-2")
    listed = relay.json("admin", "list")
    assert [(a["name"], a["created_by"], a["last_login_at"], a["tokens"]) for a in listed] == [
        ("alice", audit.cli_actor(), None, 0),
        ("bob.ops-2", audit.cli_actor(), None, 0),
    ]
    text_out = relay("admin", "list").stdout
    assert "alice" in text_out and "UTC" in text_out

    taken = relay("admin", "add", "alice", "--password-file", _password_file(tmp_path), code=1)
    assert taken.stderr == "error: admin 'alice' already exists\n"
    for bad in ["", "a" * 65, "al ice", "ålice", "a/b"]:
        result = relay("admin", "add", bad, "--password-file", _password_file(tmp_path), code=1)
        assert result.stderr.startswith("error: not an admin name"), bad
    assert relay("admin", "remove", "nobody", code=1).stderr == "error: no admin 'nobody'\n"

    out = relay("admin", "remove", "alice").stdout
    assert out.startswith("admin removed: alice")
    assert [a["name"] for a in relay.json("admin", "list")] == ["bob.ops-2"]
    assert relay("admin", "remove", "alice", code=1).stderr == "error: no admin 'alice'\n"
    _add(relay, tmp_path, "alice", "another long password")
    assert [a["name"] for a in relay.json("admin", "list")] == ["alice", "bob.ops-2"]
    assert relay.count(Admin) == 2  # the removed row came back
    assert _actions(relay) == [
        ("admin.added", "admin:alice"),
        ("admin.added", "admin:bob.ops-2"),
        ("admin.removed", "admin:alice"),
        ("admin.added", "admin:alice"),
    ]


def test_weak_passwords_are_refused_and_nothing_changes(relay: CliRelay, tmp_path: Path) -> None:
    before = (relay.count(Admin), relay.count(AuditEvent))
    for password, message in [
        ("short pass1", "the password is too short: at least 12 characters"),
        ("administrator", "the password must not be the admin's name"),
        ("ADMINISTRATOR", "the password must not be the admin's name"),
    ]:
        path = _password_file(tmp_path, password)
        result = relay("admin", "add", "administrator", "--password-file", path, code=1)
        assert result.stderr == f"error: {message}\n"
    empty = tmp_path / "empty"
    empty.write_text("\nsecond line is not read\n")
    result = relay("admin", "add", "x", "--password-file", str(empty), code=1)
    assert result.stderr == f"error: no password: the first line of {empty} is empty\n"
    missing = tmp_path / "missing"
    result = relay("admin", "add", "x", "--password-file", str(missing), code=1)
    assert result.stderr.startswith(f"error: cannot read the password file {missing}")
    with pytest.raises(admins.AdminError, match="too short"):
        admins.add_admin(relay.db, "carol", "x" * 11, "test")
    assert (relay.count(Admin), relay.count(AuditEvent)) == before


def test_the_password_is_prompted_twice_unseen(
    relay: CliRelay, tmp_path: Path, web: WebSettings
) -> None:
    # A mismatch asks again; the typed password never shows on the terminal.
    typed = f"one password!\nanother one!\n{PASSWORD}\n{PASSWORD}\n"
    result = relay("admin", "add", "dora", input=typed)
    assert "do not match" in result.output and PASSWORD not in result.output
    assert result.stdout.endswith("admin added: dora\n")
    admins.log_in(relay.db, "dora", PASSWORD, CLIENT, web, now=T0)
    result = relay("admin", "add", "erin", input="too short\ntoo short\n", code=1)
    assert "error: the password is too short" in result.stderr
    assert [a["name"] for a in relay.json("admin", "list")] == ["dora"]


def test_tokens_are_shown_once_work_and_stop_when_revoked(relay: CliRelay, tmp_path: Path) -> None:
    _add(relay, tmp_path, "alice")
    lines = relay("admin", "token", "alice", "--label", "nightly export").stdout.splitlines()
    assert lines[0] == "token 1 issued for alice:" and "not shown again" in lines[2]
    secret = lines[1]
    assert secret.startswith("er_") and len(secret) == 3 + 43  # 32 bytes, base64 unpadded

    assert admins.token_admin(relay.db, secret, now=T0) == "alice"
    assert admins.token_admin(relay.db, secret + "x") is None
    assert admins.token_admin(relay.db, "") is None
    [listed] = relay.json("admin", "tokens", "alice")
    assert listed == {
        "id": 1,
        "admin": "alice",
        "label": "nightly export",
        "created_at": listed["created_at"],
        "last_used_at": T0.isoformat(),
        "revoked_at": None,
    }
    assert relay.json("admin", "list")[0]["tokens"] == 1
    assert secret not in relay("admin", "tokens").stdout
    # Only the SHA-256 of the secret is stored.
    assert secret not in _all_values(relay, "admin_tokens")
    with relay.db.transaction() as s:
        assert (
            s.scalar(select(AdminToken.token_hash)) == hashlib.sha256(secret.encode()).hexdigest()
        )

    assert relay("admin", "tokens", "nobody", code=1).stderr == "error: no admin 'nobody'\n"
    assert relay("admin", "token", "nobody", code=1).stderr == "error: no admin 'nobody'\n"
    assert relay("admin", "revoke", "7", code=1).stderr == "error: no token 7\n"
    assert relay("admin", "revoke", "seven", code=2).exit_code == 2
    assert relay("admin", "revoke", "1").stdout == "token 1 of alice revoked\n"
    assert admins.token_admin(relay.db, secret) is None
    assert "already revoked" in relay("admin", "revoke", "1", code=1).stderr
    [revoked] = relay.json("admin", "tokens")
    assert revoked["revoked_at"] is not None
    assert relay.json("admin", "list")[0]["tokens"] == 0
    assert _actions(relay)[1:] == [("token.issued", "token:1"), ("token.revoked", "token:1")]


def test_a_removed_admins_tokens_and_sessions_are_dead(
    relay: CliRelay, tmp_path: Path, web: WebSettings
) -> None:
    _add(relay, tmp_path, "alice")
    _, secret = admins.issue_token(relay.db, "alice", "test")
    cookie, _ = admins.log_in(relay.db, "alice", PASSWORD, CLIENT, web, now=T0)
    relay("admin", "remove", "alice")
    assert admins.token_admin(relay.db, secret) is None
    assert admins.session_of(relay.db, cookie, web, now=T0) is None
    with pytest.raises(admins.LoginRefused, match=r"^wrong name or password$"):
        admins.log_in(relay.db, "alice", PASSWORD, CLIENT, web, now=T0)
    [token] = relay.json("admin", "tokens")
    assert token["revoked_at"] is not None
    with relay.db.transaction() as s:
        assert s.scalar(select(AdminSession.ended_at)) is not None
    # The name added again is a new account: the old token and session stay dead.
    _add(relay, tmp_path, "alice")
    assert admins.token_admin(relay.db, secret) is None
    assert admins.session_of(relay.db, cookie, web, now=T0) is None


def test_sessions_expire_when_idle_and_at_the_latest_after_session_max(
    relay: CliRelay, tmp_path: Path, web: WebSettings
) -> None:
    _add(relay, tmp_path, "alice")
    cookie, session = admins.log_in(relay.db, "alice", PASSWORD, CLIENT, web, now=T0)
    assert (session.admin, session.expires_at) == ("alice", T0 + web.session_idle)
    assert len(session.csrf) >= 32
    # Each use restarts the idle time, until the absolute end.
    now = T0
    while now + timedelta(minutes=25) < T0 + web.session_max:
        now += timedelta(minutes=25)
        seen = admins.session_of(relay.db, cookie, web, now=now)
        assert seen is not None and seen.csrf == session.csrf
        assert seen.expires_at == min(now + web.session_idle, T0 + web.session_max)
    assert admins.session_of(relay.db, cookie, web, now=T0 + web.session_max) is None
    assert admins.session_of(relay.db, cookie, web, now=now) is None  # ended for good

    idle, _ = admins.log_in(relay.db, "alice", PASSWORD, CLIENT, web, now=T0)
    at_end = T0 + web.session_idle - timedelta(seconds=1)
    assert admins.session_of(relay.db, idle, web, now=at_end) is not None
    late = at_end + web.session_idle
    assert admins.session_of(relay.db, idle, web, now=late) is None
    assert admins.session_of(relay.db, "not a cookie", web, now=T0) is None


def test_log_out_ends_the_session(relay: CliRelay, tmp_path: Path, web: WebSettings) -> None:
    _add(relay, tmp_path, "alice")
    cookie, _ = admins.log_in(relay.db, "alice", PASSWORD, CLIENT, web)
    other, _ = admins.log_in(relay.db, "alice", PASSWORD, "192.0.2.8", web)
    assert admins.session_of(relay.db, cookie, web) is not None
    admins.log_out(relay.db, cookie, audit.web_actor("alice"))
    admins.log_out(relay.db, cookie, audit.web_actor("alice"))  # already ended: nothing
    assert admins.session_of(relay.db, cookie, web) is None
    assert admins.session_of(relay.db, other, web) is not None
    assert _actions(relay).count(("logout", "admin:alice")) == 1
    with relay.db.transaction() as s:
        assert s.scalar(select(Admin.last_login_at)) is not None


def test_failed_logins_per_name_throttle_even_the_right_password(
    relay: CliRelay, tmp_path: Path, web: WebSettings
) -> None:
    _add(relay, tmp_path, "alice")
    for n in range(web.login_attempts):
        with pytest.raises(admins.LoginRefused, match=r"^wrong name or password$"):
            at = T0 + timedelta(minutes=n)
            admins.log_in(relay.db, "alice", "wrong password!", f"198.51.100.{n}", web, now=at)
    now = T0 + timedelta(minutes=6)
    for _ in range(20):  # hammering a throttled name writes one audit row, not twenty
        with pytest.raises(admins.LoginThrottled) as caught:
            admins.log_in(relay.db, "alice", PASSWORD, "203.0.113.1", web, now=now)
    assert caught.value.retry_after == T0 + web.login_window - now  # the oldest counted
    assert "try again in 540 seconds" in str(caught.value)
    # The oldest failure leaves the window: one more try; failing it throttles again.
    now = T0 + web.login_window + timedelta(seconds=1)
    with pytest.raises(admins.LoginRefused):
        admins.log_in(relay.db, "alice", "wrong password!", "203.0.113.1", web, now=now)
    with pytest.raises(admins.LoginThrottled) as caught:
        admins.log_in(relay.db, "alice", PASSWORD, "203.0.113.1", web, now=now)
    assert caught.value.retry_after == T0 + timedelta(minutes=1) + web.login_window - now
    # Another name is not throttled by alice's failures.
    _add(relay, tmp_path, "bob")
    admins.log_in(relay.db, "bob", PASSWORD, "203.0.113.2", web, now=now)
    later = T0 + timedelta(minutes=1) + web.login_window
    admins.log_in(relay.db, "alice", PASSWORD, "203.0.113.1", web, now=later)
    actions = [a for a, _ in _actions(relay)]
    assert actions.count("login.refused") == web.login_attempts + 1
    # Throttled twice within one window: audited once (each attempt is in the log).
    assert actions.count("login.throttled") == 1 and actions.count("login") == 2


def test_failed_logins_per_client_throttle_every_name(
    relay: CliRelay, tmp_path: Path, web: WebSettings
) -> None:
    _add(relay, tmp_path, "alice")
    for n in range(web.login_attempts):
        with pytest.raises(admins.LoginRefused, match=r"^wrong name or password$"):
            admins.log_in(relay.db, f"guess{n}", PASSWORD, CLIENT, web, now=T0)
    with pytest.raises(admins.LoginThrottled) as caught:
        admins.log_in(relay.db, "alice", PASSWORD, CLIENT, web, now=T0 + timedelta(minutes=5))
    assert caught.value.retry_after == timedelta(minutes=10)
    admins.log_in(relay.db, "alice", PASSWORD, "198.51.100.1", web, now=T0)  # another client
    # The counts are in the database: another process, or node, sees them.
    with relay.db.transaction() as s:
        assert s.scalar(select(LoginFailure.client).limit(1)) == CLIENT
    admins.log_in(relay.db, "alice", PASSWORD, CLIENT, web, now=T0 + web.login_window)


def test_a_success_clears_the_names_failures(
    relay: CliRelay, tmp_path: Path, web: WebSettings
) -> None:
    _add(relay, tmp_path, "alice")

    def fail(times: int) -> None:
        for n in range(times):
            with pytest.raises(admins.LoginRefused):
                admins.log_in(relay.db, "alice", "not it at all", f"10.0.0.{n}", web, now=T0)

    fail(web.login_attempts - 1)
    admins.log_in(relay.db, "alice", PASSWORD, "10.0.1.1", web, now=T0)
    fail(web.login_attempts - 1)  # would have been throttled without the clearing
    admins.log_in(relay.db, "alice", PASSWORD, "10.0.1.1", web, now=T0)


def test_unknown_names_and_wrong_passwords_read_alike(
    relay: CliRelay, tmp_path: Path, web: WebSettings
) -> None:
    _add(relay, tmp_path, "alice")
    messages = set()
    for name, password in [("alice", "wrong password"), ("nobody", PASSWORD), ("b a d", "x")]:
        with pytest.raises(admins.LoginRefused) as caught:
            admins.log_in(relay.db, name, password, CLIENT, web, now=T0)
        messages.add(str(caught.value))
    assert messages == {"wrong name or password"}
    assert [s for a, s in _actions(relay) if a == "login.refused"] == [
        "admin:alice",
        "admin:nobody",
        "admin:b a d",
    ]


def test_a_hash_with_old_parameters_is_replaced_at_login(
    relay: CliRelay, tmp_path: Path, web: WebSettings
) -> None:
    _add(relay, tmp_path, "alice")
    old = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    with relay.db.transaction() as s:
        s.execute(update(Admin).values(password_hash=old))
    admins.log_in(relay.db, "alice", PASSWORD, CLIENT, web, now=T0)
    with relay.db.transaction() as s:
        new = s.scalar(select(Admin.password_hash))
    assert new != old and new is not None and not PasswordHasher().check_needs_rehash(new)
    admins.log_in(relay.db, "alice", PASSWORD, CLIENT, web, now=T0)


def test_only_hashes_are_stored_and_the_audit_holds_no_secret(
    relay: CliRelay, tmp_path: Path, web: WebSettings
) -> None:
    _add(relay, tmp_path, "alice")
    _, token = admins.issue_token(relay.db, "alice", "test", label="ci")
    cookie, session = admins.log_in(relay.db, "alice", PASSWORD, CLIENT, web)
    with pytest.raises(admins.LoginRefused):
        admins.log_in(relay.db, "alice", "a wrong password", CLIENT, web)
    admins.log_out(relay.db, cookie, audit.web_actor("alice"))

    [password_hash] = [v for v in _all_values(relay, "admins") if v.startswith("$argon2")]
    assert password_hash.startswith("$argon2id$") and PASSWORD not in password_hash
    sessions = _all_values(relay, "web_sessions")
    assert hashlib.sha256(cookie.encode()).hexdigest() in sessions and cookie not in sessions
    assert session.csrf in sessions  # not a secret from the browser: sent in every form
    for table in ["admins", "admin_tokens", "web_sessions", "login_failures"]:
        values = " ".join(_all_values(relay, table))
        assert all(secret not in values for secret in [PASSWORD, token, cookie]), table

    with relay.db.transaction() as s:
        events = s.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
        rows = [(e.actor, e.action, e.subject, e.detail) for e in events]
    mine = [r for r in rows if r[2].startswith(("admin:", "token:"))]
    assert [(actor, action) for actor, action, _, _ in mine] == [
        (audit.cli_actor(), "admin.added"),
        ("test", "token.issued"),
        ("web:alice", "login"),
        ("relay", "login.refused"),
        ("web:alice", "logout"),
    ]
    assert mine[1][3] == {"admin": "alice", "label": "ci"}
    assert mine[2][3] == {"client": CLIENT}
    shown = repr(rows)
    assert all(secret not in shown for secret in [PASSWORD, "a wrong password", token, cookie])
