"""The console over plain HTTP (httpx, real uvicorn on a loopback port): security headers,
login and sessions, CSRF, throttled logins, refusals as flash messages, the audited
reading of a message, HTTPS, and `relay serve` starting the console."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, text

from relay.app import advisory_admin
from relay.model import Advisory, AuditEvent, Delivery
from relay.store.spool import Spool
from relay.web.app import CSP
from tests.support.browser import ADMIN, PASSWORD, ConsoleThread, audit_rows, web_relay
from tests.support.certs import CertificateAuthority
from tests.support.cli import CliRelay
from tests.support.keys import KeyFactory
from tests.support.relayhome import RelayThread

LIFT = (datetime.now(UTC) + timedelta(days=10)).replace(microsecond=0, second=0)
ADVISORY = "CVE-2026-4242"


def _advisory(relay: CliRelay) -> None:
    advisory_admin.create_advisory(
        relay.db, Spool(relay.db), relay.settings, ADVISORY, "Heap overflow", LIFT, "cli:setup"
    )


@pytest.fixture
def relay(tmp_path: Path, keys: KeyFactory) -> CliRelay:
    made = web_relay(tmp_path, keys)
    _advisory(made)
    return made


@pytest.fixture
def console(relay: CliRelay) -> Iterator[ConsoleThread]:
    with ConsoleThread(relay.settings) as running:
        yield running


@contextlib.contextmanager
def _logged_in(base: str) -> Iterator[tuple[httpx.Client, str]]:
    """A client with a session, and the session's CSRF token read from a page."""
    with httpx.Client(base_url=base) as client:
        yield client, _csrf_after_login(client)


def _csrf_after_login(client: httpx.Client) -> str:
    answer = client.post("/login", data={"name": ADMIN, "password": PASSWORD})
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    found = re.search(r'name="csrf" value="([^"]+)"', client.get("/").text)
    assert found is not None
    return found.group(1)


def _lift_at(relay: CliRelay) -> datetime | None:
    with relay.db.transaction() as s:
        return s.scalar(select(Advisory.lift_at).where(Advisory.id == ADVISORY))


def _rows(relay: CliRelay) -> int:
    return relay.count(AuditEvent)


def test_every_answer_carries_the_security_headers(console: ConsoleThread):
    with _logged_in(console.url) as (client, _):
        answers = [
            client.get("/login"),
            client.get("/"),
            client.get(f"/advisories/{ADVISORY}"),
            client.get("/static/console.js"),
            client.get("/advisories/NOPE-1"),
        ]
    for answer in answers:
        assert answer.headers["content-security-policy"] == CSP
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert answer.headers["cache-control"] == "no-store"
        assert "strict-transport-security" not in answer.headers  # plain HTTP
    # /login with a live session sends on to the advisories.
    assert [a.status_code for a in answers] == [303, 200, 200, 200, 404]
    assert "no advisory 'NOPE-1'" in answers[-1].text.replace("&#39;", "'")
    assert "Traceback" not in answers[-1].text
    # No inline script anywhere: the one script is a file of the console's own.
    assert re.findall(r"<script[^>]*>", answers[2].text) == [
        '<script src="/static/console.js" defer>'
    ]


def test_without_a_session_pages_send_to_login_and_actions_change_nothing(
    console: ConsoleThread, relay: CliRelay
):
    rows = _rows(relay)
    with httpx.Client(base_url=console.url) as client:
        page = client.get(f"/advisories/{ADVISORY}")
        assert page.status_code == 303
        assert page.headers["location"] == f"/login?next=/advisories/{ADVISORY}"
        fragment = client.get(
            f"/advisories/{ADVISORY}/deliveries", headers={"X-Requested-With": "console"}
        )
        assert fragment.status_code == 401
        moved = client.post(
            f"/advisories/{ADVISORY}/schedule", data={"lift": "in 30d", "csrf": "x"}
        )
        assert moved.status_code == 303 and moved.headers["location"] == "/login"
        client.cookies.set("relay_session", "not-a-session")
        assert client.get("/").status_code == 303
        assert client.get("/login").status_code == 200
    assert _lift_at(relay) == LIFT and _rows(relay) == rows


def test_a_missing_or_wrong_csrf_token_is_refused_and_changes_nothing(
    console: ConsoleThread, relay: CliRelay
):
    with _logged_in(console.url) as (client, csrf):
        rows = _rows(relay)
        for token in [None, "", csrf[:-1] + ("A" if csrf[-1] != "A" else "B")]:
            form = {"lift": "in 30d", "tz": "UTC", "reason": "forged"}
            if token is not None:
                form["csrf"] = token
            answer = client.post(f"/advisories/{ADVISORY}/schedule", data=form)
            assert answer.status_code == 403
            assert "security token" in answer.text
        # The right token from another origin is refused too.
        answer = client.post(
            f"/advisories/{ADVISORY}/cancel",
            data={"csrf": csrf},
            headers={"Origin": "https://evil.example"},
        )
        assert answer.status_code == 403
    assert _lift_at(relay) == LIFT and _rows(relay) == rows


def test_an_action_moves_the_lift_as_the_admin_and_a_refusal_is_a_flash(
    console: ConsoleThread, relay: CliRelay
):
    with _logged_in(console.url) as (client, csrf):
        moved = client.post(
            f"/advisories/{ADVISORY}/schedule",
            data={"csrf": csrf, "lift": "2026-12-30 09:30", "tz": "Europe/Berlin", "reason": "x"},
        )
        assert moved.status_code == 303
        page = client.get(moved.headers["location"]).text
        assert "lift time of CVE-2026-4242 moved" in page
        assert _lift_at(relay) == datetime(2026, 12, 30, 8, 30, tzinfo=UTC)
        (row,) = audit_rows(relay, "advisory.moved")
        assert row[0] == f"web:{ADMIN}"
        # A refusal: shown, nothing changed, no traceback; shown once only.
        past = client.post(
            f"/advisories/{ADVISORY}/schedule",
            data={"csrf": csrf, "lift": "2020-01-01 00:00Z", "tz": "UTC"},
        )
        refused = client.get(past.headers["location"]).text
        assert 'class="flash error"' in refused and "is not in the future" in refused
        assert "Traceback" not in refused
        assert 'class="flash error"' not in client.get(f"/advisories/{ADVISORY}").text
        unreadable = client.post(
            f"/advisories/{ADVISORY}/schedule", data={"csrf": csrf, "lift": "soon", "tz": ""}
        )
        assert "cannot read" in client.get(unreadable.headers["location"]).text
    assert _lift_at(relay) == datetime(2026, 12, 30, 8, 30, tzinfo=UTC)


def test_failed_logins_are_throttled_with_the_retry_time(console: ConsoleThread):
    with httpx.Client(base_url=console.url) as client:
        for _ in range(console.console.settings.web.login_attempts):
            wrong = client.post("/login", data={"name": ADMIN, "password": "wrong password!"})
            assert wrong.status_code == 401
            assert "relay_session" not in wrong.headers.get("set-cookie", "")
        throttled = client.post("/login", data={"name": ADMIN, "password": PASSWORD})
        assert throttled.status_code == 429
        assert int(throttled.headers["retry-after"]) > 0
        assert "try again in" in throttled.text
        assert "relay_session" not in throttled.headers.get("set-cookie", "")
        assert client.get("/").status_code == 303


def test_logging_out_ends_the_session(console: ConsoleThread):
    with _logged_in(console.url) as (client, csrf):
        secret = client.cookies["relay_session"]
        out = client.post("/logout", data={"csrf": csrf})
        assert out.status_code == 303 and out.headers["location"] == "/login"
        client.cookies.set("relay_session", secret)
        again = client.get("/")
        assert again.status_code == 303 and again.headers["location"] == "/login"


def test_a_message_text_is_shown_only_on_request_and_audited(
    console: ConsoleThread, relay: CliRelay
):
    with relay.db.transaction() as s:
        (notice,) = s.scalars(
            select(Delivery.message_id).where(Delivery.advisory_id == ADVISORY).distinct()
        )
    with _logged_in(console.url) as (client, csrf):
        page = client.get(f"/advisories/{ADVISORY}").text
        assert "Heap overflow" in page  # the title, as the CLI lists it
        assert "2026" in page and "lift time" in page.lower()
        assert audit_rows(relay, "message.viewed") == []
        read = client.post(f"/messages/{notice}/read", data={"csrf": csrf, "back": "/"})
        assert read.status_code == 200
        assert "recorded in the audit trail" in read.text
        assert ADVISORY in read.text and "<pre" in read.text
        assert client.post(f"/messages/{notice}/read", data={}).status_code == 403
    ((actor, subject, detail),) = audit_rows(relay, "message.viewed")
    assert (actor, subject, detail["advisory"]) == (f"web:{ADMIN}", notice, ADVISORY)


def test_https_sets_hsts_and_a_secure_cookie(tmp_path: Path, keys: KeyFactory):
    ca = CertificateAuthority.create(tmp_path / "ca")
    issued = ca.issue("localhost", tmp_path / "tls")
    (tmp_path / "relay").mkdir()
    relay = web_relay(
        tmp_path / "relay",
        keys,
        web=f'tls_cert = "{issued.cert}"\ntls_key = "{issued.key}"',
    )
    trust = ca.client_context()
    with (
        ConsoleThread(relay.settings) as console,
        httpx.Client(base_url=console.url, verify=trust) as client,
    ):
        assert console.url.startswith("https://127.0.0.1:")
        login = client.post("/login", data={"name": ADMIN, "password": PASSWORD})
        assert login.status_code == 303
        cookie = login.headers["set-cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert client.get("/").headers["strict-transport-security"].startswith("max-age=")


def test_relay_serve_starts_the_console_when_enabled(tmp_path: Path, keys: KeyFactory):
    relay = web_relay(tmp_path, keys, web="enabled = true")
    with RelayThread(relay.settings, dispatch=False) as running:
        assert running.relay is not None and running.relay.web is not None
        base = running.relay.web.url
        with httpx.Client(base_url=base) as client:
            assert client.get("/login").status_code == 200
            assert client.get("/").headers["location"] == "/login"
            assert client.get("/api/v1/openapi.json").status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/login")


def test_the_audit_page_shows_the_chain_check(console: ConsoleThread, relay: CliRelay):
    with _logged_in(console.url) as (client, _):
        page = client.get("/audit").text
        assert 'class="chain ok"' in page and "Chain verified" in page
        assert f"web:{ADMIN}" in page  # the login's own row
        with relay.db.engine.begin() as conn:
            first = conn.execute(text("SELECT min(id) FROM audit_events")).scalar_one()
            conn.execute(
                text("UPDATE audit_events SET actor = 'cli:mallory' WHERE id = :id"), {"id": first}
            )
        broken = client.get("/audit").text
        assert 'class="chain broken"' in broken and f"BROKEN at row {first}" in broken


def test_an_unexpected_error_is_a_plain_500_page(console: ConsoleThread, relay: CliRelay):
    with _logged_in(console.url) as (client, _):
        with relay.db.engine.begin() as conn:
            conn.execute(text("ALTER TABLE incidents RENAME TO incidents_away"))
        try:
            answer = client.get("/incidents")
        finally:
            with relay.db.engine.begin() as conn:
                conn.execute(text("ALTER TABLE incidents_away RENAME TO incidents"))
    assert answer.status_code == 500
    assert "could not answer this request" in answer.text
    assert "Traceback" not in answer.text and "incidents_away" not in answer.text
    assert answer.headers["content-security-policy"] == CSP


def test_relay_web_serves_the_console_until_sigterm(tmp_path: Path, keys: KeyFactory):
    relay = web_relay(tmp_path, keys)
    command = [sys.executable, "-m", "relay", "--config", str(relay.config), "web"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=tmp_path) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            found = re.search(r"console on (http://127\.0\.0\.1:\d+);", line)
            assert found, line
            assert httpx.get(f"{found.group(1)}/login").status_code == 200
        finally:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_members_are_suspended_and_resumed_from_the_console(
    console: ConsoleThread, relay: CliRelay
):
    member = "security@distro1.example"
    with _logged_in(console.url) as (client, csrf):
        page = client.get("/members").text
        assert member in page and "expires" not in page  # the test keys never expire
        done = client.post(
            f"/members/{member}/suspend", data={"csrf": csrf, "reason": "key compromised"}
        )
        shown = client.get(done.headers["location"]).text
        assert f"member suspended: {member}" in shown
        assert re.search(
            rf'data-member="{re.escape(member)}">\s*<td>[^<]*</td><td>[^<]*</td>'
            r'<td class="state suspended">',
            shown,
        )
        # The notice queued for it is cancelled with the suspension.
        with relay.db.transaction() as s:
            statuses = s.scalars(select(Delivery.status).where(Delivery.recipient == member))
            assert set(statuses) == {"failed"}
        refused = client.post(f"/members/{member}/remove", data={"csrf": csrf, "reason": "x"})
        assert "not &#39;remove&#39;" in client.get(refused.headers["location"]).text
        client.post(f"/members/{member}/resume", data={"csrf": csrf, "reason": "new key"})
        assert f"member resumed: {member}" in client.get("/members").text
    actors = {a for a, _, _ in audit_rows(relay, "member.suspended")}
    actors |= {a for a, _, _ in audit_rows(relay, "member.resumed")}
    assert actors == {f"web:{ADMIN}"}


def test_a_session_ends_after_its_idle_time(tmp_path: Path, keys: KeyFactory):
    relay = web_relay(tmp_path, keys, web='session_idle = "1s"')
    with ConsoleThread(relay.settings) as console, _logged_in(console.url) as (client, _):
        assert client.get("/").status_code == 200
        time.sleep(1.5)  # the idle time is the server's clock: nothing to poll for
        assert client.get("/").headers["location"] == "/login"


def test_create_set_public_text_lift_and_cancel_through_the_forms(
    console: ConsoleThread, relay: CliRelay
):
    with _logged_in(console.url) as (client, csrf):
        made = client.post(
            "/advisories",
            data={
                "csrf": csrf,
                "advisory_id": "CVE-2026-5151",
                "title": "Race in <b>auth</b>",
                "lift": "2026-12-24 09:00",
                "tz": "America/New_York",
            },
        )
        assert made.headers["location"] == "/advisories/CVE-2026-5151"
        page = client.get(made.headers["location"]).text
        assert "advisory CVE-2026-5151 created" in page
        assert "Race in &lt;b&gt;auth&lt;/b&gt;" in page and "<b>auth" not in page
        assert "2026-12-24 14:00 UTC" in page  # 09:00 in New York
        texted = client.post(
            "/advisories/CVE-2026-5151/public-text",
            data={"csrf": csrf, "text": "Fixed in 1.2.3.\r\nUpgrade.\r\n"},
        )
        assert "(25 characters)" in client.get(texted.headers["location"]).text
        # Lifting early is not undone: without the ID typed, nothing changes.
        for typed in ["", "CVE-2026-515", ADVISORY]:
            stray = client.post(
                "/advisories/CVE-2026-5151/lift",
                data={"csrf": csrf, "reason": "broken", "confirm": typed},
            )
            page = client.get(stray.headers["location"]).text
            assert "nothing changed: type CVE-2026-5151 in the confirmation box" in page
            assert 'id="state">embargoed' in page
        earlier = client.post(
            "/advisories/CVE-2026-5151/schedule",
            data={"csrf": csrf, "lift": "2026-12-23 09:00", "tz": "UTC", "reason": "sooner"},
        )
        page = client.get(earlier.headers["location"]).text
        assert "to move the lift earlier" in page and "2026-12-24 14:00 UTC" in page
        lifted = client.post(
            "/advisories/CVE-2026-5151/lift",
            data={"csrf": csrf, "reason": "broken", "confirm": "CVE-2026-5151"},
        )
        page = client.get(lifted.headers["location"]).text
        assert "advisory CVE-2026-5151 lifted" in page and 'id="state">lifted' in page
        again = client.post(
            "/advisories/CVE-2026-5151/cancel", data={"csrf": csrf, "confirm": "CVE-2026-5151"}
        )
        assert "is already lifted" in client.get(again.headers["location"]).text
        unconfirmed = client.post(f"/advisories/{ADVISORY}/cancel", data={"csrf": csrf})
        assert "to cancel it" in client.get(unconfirmed.headers["location"]).text
        gone = client.post(
            f"/advisories/{ADVISORY}/cancel",
            data={"csrf": csrf, "reason": "x", "confirm": ADVISORY},
        )
        assert f"advisory {ADVISORY} cancelled" in client.get(gone.headers["location"]).text
        assert ADVISORY not in client.get("/").text  # only embargoed ones by default
        assert ADVISORY in client.get("/?all=1").text
        for action in ["/held/0123456789abcdef/release", "/queue/999999/retry"]:
            refused = client.post(action, data={"csrf": csrf, "reason": "x"})
            assert refused.status_code == 303
            assert 'class="flash error"' in client.get(refused.headers["location"]).text
    with relay.db.transaction() as s:
        states = {i: st for i, st in s.execute(select(Advisory.id, Advisory.state))}
    assert states == {ADVISORY: "cancelled", "CVE-2026-5151": "lifted"}


def test_a_request_for_another_host_name_is_refused(tmp_path: Path, keys: KeyFactory):
    """DNS rebinding: a page whose name now points at the console sends its own name as
    Host; the console answers only to its names (loopback's and [web] server_names)."""
    relay = web_relay(tmp_path, keys, web='server_names = ["console.example.org"]')
    with ConsoleThread(relay.settings) as running, httpx.Client(base_url=running.url) as client:
        rebound = client.post(
            "/login",
            data={"name": ADMIN, "password": PASSWORD},
            headers={"Host": "attacker.example"},
        )
        assert rebound.status_code == 400
        assert "relay_session" not in rebound.headers.get("set-cookie", "")
        assert rebound.headers["content-security-policy"] == CSP
        for name in ["console.example.org", "localhost", "127.0.0.1"]:
            page = client.get("/login", headers={"Host": name})
            assert page.status_code == 200, name
    assert audit_rows(relay, "login") == []  # the rebound login never reached the check
