"""The console in a real browser (headless Chromium through Playwright): logging in, a
countdown that ticks, moving a lift from a form, the delivery matrix filling in during a
fan-out, releasing a held post, a forged CSRF token refused, and the session cookie over
HTTPS. One browser for the module; each test its own relay, console and browser context."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from playwright.sync_api import Page, expect
from sqlalchemy import select

from relay.app import advisory_admin
from relay.model import Advisory, Delivery, DeliveryStatus, Message
from relay.store.spool import Spool
from tests.support.browser import (
    ADMIN,
    SCREENSHOTS,
    ConsoleThread,
    audit_rows,
    browser_page,  # noqa: F401  (fixtures: a browser context per test)
    chromium,  # noqa: F401  (one Chromium for the module)
    log_in,
    web_relay,
)
from tests.support.certs import CertificateAuthority
from tests.support.cli import CliRelay
from tests.support.keys import KeyFactory, Keyring
from tests.support.mail import pgp_mime_signed, text_entity
from tests.support.relayhome import LIST, RelayThread, smtp_post

ROOT = Path(__file__).resolve().parent.parent
POLICY = f'[embargo]\npolicy = "{ROOT / "relay" / "policies" / "kubernetes-distributors.toml"}"\n'
ADVISORY = "CVE-2026-7777"


def _relay(root: Path, keys: KeyFactory, days: int = 9) -> CliRelay:
    """A relay under the Kubernetes list's policy with one embargoed advisory, whose lift
    time notice waits in the queue for each of the two members."""
    relay = web_relay(root, keys, extra=POLICY)
    lift = (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0)
    advisory_admin.create_advisory(
        relay.db, Spool(relay.db), relay.settings, ADVISORY, "Token leak", lift, "cli:setup"
    )
    return relay


def _copies(relay: CliRelay, kind: str) -> list[tuple[str, str]]:
    query = (
        select(Delivery.recipient, Delivery.status)
        .join(Message, Delivery.message_id == Message.id)
        .where(Delivery.advisory_id == ADVISORY, Message.kind == kind)
        .order_by(Delivery.id)
    )
    with relay.db.transaction() as s:
        return [(r, st) for r, st in s.execute(query)]


def _row(page: Page, recipient: str, state: str):  # type: ignore[no-untyped-def]
    return page.locator(f'#deliveries tr[data-recipient="{recipient}"] td[data-state="{state}"]')


def test_log_in_watch_the_countdown_and_move_the_lift(page: Page, tmp_path: Path, keys):
    relay = _relay(tmp_path, keys)
    with ConsoleThread(relay.settings) as console:
        log_in(page, console.url)
        row = page.locator(f"#advisory-{ADVISORY}")
        expect(row).to_contain_text("Token leak")
        expect(row.locator(".warning").first).to_be_visible()  # the policy's soft rules
        countdown = row.locator(".countdown")
        expect(countdown).to_have_text(_seconds_pattern())
        first = countdown.inner_text()
        expect(countdown).not_to_have_text(first, timeout=3000)  # it ticks every second
        expect(row.locator(".local")).to_contain_text("Europe/Berlin")  # the viewer's zone

        page.click(f"text={ADVISORY}")
        form = page.locator("form#schedule")
        expect(form.locator("input[name=tz]")).to_have_value("Europe/Berlin")
        wall = (datetime.now(UTC) + timedelta(days=12)).astimezone(ZoneInfo("Europe/Berlin"))
        wall = wall.replace(hour=17, minute=0, second=0, microsecond=0)
        form.locator("input[name=lift]").fill(wall.strftime("%Y-%m-%d %H:%M"))
        form.locator("input[name=reason]").fill("the fix needs a week more")
        form.locator("button[type=submit]").click()
        expect(page.locator(".flash.ok").first).to_contain_text(f"lift time of {ADVISORY} moved")
        expect(page.locator("#lift-time .utc")).to_contain_text(
            wall.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
        )

        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shot = SCREENSHOTS / "advisory.png"  # the README's picture (docs/console.png)
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000

    with relay.db.transaction() as s:
        assert s.scalar(select(Advisory.lift_at).where(Advisory.id == ADVISORY)) == wall
    # The first notice and the one for the move, each queued for both members.
    notices = _copies(relay, "notice")
    assert sorted(notices) == sorted(
        [(f"security@distro{n}.example", DeliveryStatus.QUEUED) for n in (0, 1)] * 2
    )
    ((actor, subject, detail),) = audit_rows(relay, "advisory.moved")
    assert (actor, subject) == (f"web:{ADMIN}", f"advisory:{ADVISORY}")
    assert detail["reason"] == "the fix needs a week more"


def _seconds_pattern():  # type: ignore[no-untyped-def]
    import re

    return re.compile(r"^in (\d+d )?(\d+h )?\d+m \d+s$")


def test_the_matrix_fills_in_during_a_fan_out_and_a_held_post_is_released(
    page: Page, tmp_path: Path, keys
):
    relay = _relay(tmp_path, keys)
    members = [f"security@distro{n}.example" for n in (0, 1)]
    with ConsoleThread(relay.settings) as console:
        log_in(page, console.url)
        page.goto(f"{console.url}/advisories/{ADVISORY}")
        for member in members:
            expect(_row(page, member, "queued")).to_have_text("1")
            expect(_row(page, member, "sent")).to_have_text("")

        # The relay starts and fans the notices out; the page follows without a reload.
        with RelayThread(relay.settings) as running:
            for member in members:
                expect(_row(page, member, "sent")).to_have_text("1")
                expect(_row(page, member, "queued")).to_have_text("")
            assert page.url.endswith(f"/advisories/{ADVISORY}")

            # A member's post under this policy waits for a moderator.
            author = keys.make("distro1", members[1])
            body = f"Is the workaround for {ADVISORY} enough on 1.31?\n"
            subject = f"Question on {ADVISORY}"
            post = pgp_mime_signed(
                Keyring(tmp_path / "clients" / "distro1", author),
                author.fingerprint,
                text_entity(body, subject=subject),
                subject=subject,
                sender=author.address,
                to=LIST,
            )
            code, reply = running.run(smtp_post(running.port, post, sender=author.address))
            assert code == 250, reply

            page.click("nav >> text=Held")
            held = page.locator("table.held tbody tr")
            expect(held).to_have_count(1)
            post_id = held.get_attribute("data-post")
            assert post_id is not None
            assert "workaround" not in page.content()  # the text only on request
            held.locator("text=Release").click()
            expect(page.locator(".flash.ok")).to_contain_text(f"released: {post_id}")
            expect(page.locator("table.held")).to_have_count(0)

    with relay.db.transaction() as s:
        statuses = s.scalars(select(Delivery.status).where(Delivery.message_id == post_id)).all()
    assert statuses and DeliveryStatus.HELD not in statuses
    ((actor, subject, _),) = audit_rows(relay, "post.released")
    assert (actor, subject) == (f"web:{ADMIN}", post_id)


def test_over_https_the_session_cookie_is_secure(page: Page, tmp_path: Path, keys):
    ca = CertificateAuthority.create(tmp_path / "ca")
    issued = ca.issue("localhost", tmp_path / "tls")
    (tmp_path / "relay").mkdir()
    relay = web_relay(
        tmp_path / "relay", keys, web=f'tls_cert = "{issued.cert}"\ntls_key = "{issued.key}"'
    )
    with ConsoleThread(relay.settings) as console:
        assert console.url.startswith("https://")
        log_in(page, console.url)
        (cookie,) = page.context.cookies()
        assert cookie["name"] == "relay_session"
        assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert cookie["path"] == "/"
        # Without it, the console sends the browser to the login page.
        page.context.clear_cookies()
        page.goto(f"{console.url}/members")
        expect(page).to_have_url(f"{console.url}/login?next=/members")


def test_a_form_with_a_wrong_csrf_token_changes_nothing(page: Page, tmp_path: Path, keys):
    """A form whose security token is not the session's (a forged page's, or one from a
    session that ended) is refused with 403, and the lift stays where it was."""
    relay = _relay(tmp_path, keys)
    with relay.db.transaction() as s:
        before = s.scalar(select(Advisory.lift_at).where(Advisory.id == ADVISORY))
    with ConsoleThread(relay.settings) as console:
        log_in(page, console.url)
        page.goto(f"{console.url}/advisories/{ADVISORY}")
        form = page.locator("form#schedule")
        form.locator("input[name=csrf]").evaluate("(field) => { field.value = 'forged' }")
        form.locator("input[name=lift]").fill("2027-02-02 16:00")
        form.locator("input[name=tz]").fill("UTC")
        with page.expect_response(f"{console.url}/advisories/{ADVISORY}/schedule") as answer:
            form.locator("button[type=submit]").click()
        assert answer.value.status == 403
        expect(page.locator("main")).to_contain_text("security token is missing or wrong")
    with relay.db.transaction() as s:
        assert s.scalar(select(Advisory.lift_at).where(Advisory.id == ADVISORY)) == before
    assert audit_rows(relay, "advisory.moved") == []
