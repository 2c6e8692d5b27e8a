"""The console for tests: a set-up relay (tests/support/cli.py) with an administrator, its
console served by uvicorn on a free loopback port in a thread of its own, and Chromium
driven by Playwright's sync API (/usr/bin/chromium, headless)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlalchemy import select

from relay.app import admins
from relay.core.config import Settings
from relay.model import AuditEvent
from relay.web.context import Console
from relay.web.server import WebServer
from tests.support.cli import CliRelay, set_up
from tests.support.keys import KeyFactory

ADMIN = "oncall"
PASSWORD = "a long pass phrase"
MEMBERS = [
    ("distro0", "security@distro0.example", "Distro Zero"),
    ("distro1", "security@distro1.example", "Distro One"),
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"


def web_relay(root: Path, keys: KeyFactory, *, extra: str = "", web: str = "") -> CliRelay:
    """A relay with two members, an administrator, and its console on port 0."""
    relay = set_up(root, keys, MEMBERS, extra=f"{extra}\n[web]\nport = 0\n{web}\n")
    admins.add_admin(relay.db, ADMIN, PASSWORD, "cli:setup")
    return relay


class ConsoleThread:
    """The console of `settings` served on its own event loop in a thread."""

    def __init__(self, settings: Settings) -> None:
        self.console = Console.open(settings)
        self.server = WebServer(self.console)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._stop: asyncio.Event | None = None
        self._running: Any = None

    @property
    def url(self) -> str:
        return self.server.url

    def __enter__(self) -> ConsoleThread:
        self.server.listen()
        self.thread.start()

        async def event() -> asyncio.Event:
            return asyncio.Event()

        self._stop = asyncio.run_coroutine_threadsafe(event(), self.loop).result(5)
        self._running = asyncio.run_coroutine_threadsafe(self.server.run(self._stop), self.loop)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        try:
            self._running.result(15)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
            self.console.close()


# A test module imports these two (their names stay free for the tests' arguments).
@pytest.fixture(scope="module", name="browser")
def chromium() -> Iterator[Browser]:
    """One Chromium per test module."""
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(name="page")
def browser_page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (no cookies) per test."""
    context = browser.new_context(ignore_https_errors=True, timezone_id="Europe/Berlin")
    context.set_default_timeout(10_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def log_in(page: Page, base: str) -> None:
    page.goto(f"{base}/login")
    page.fill("input[name=name]", ADMIN)
    page.fill("input[name=password]", PASSWORD)
    page.click("form.login button[type=submit]")
    expect(page.locator("header .who")).to_have_text(ADMIN)


def audit_rows(relay: CliRelay, action: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(actor, subject, detail) of each audit row with `action`, oldest first."""
    query = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
    with relay.db.transaction() as s:
        return [(e.actor, e.subject, dict(e.detail or {})) for e in s.execute(query).scalars()]
