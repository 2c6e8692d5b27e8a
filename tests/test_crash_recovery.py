"""SIGKILL the relay in the middle of a fan-out, restart it, and find every member served.

The relay runs as a real `relay serve` process; the smarthost is a capturing
sink in this process that answers slowly, so the kill lands mid-fan-out.
"""

from __future__ import annotations

import email
import email.policy
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy import select

from relay.model import Delivery, DeliveryStatus
from tests.support.keys import KeyFactory
from tests.support.mail import OpenedCopy, pgp_mime_signed, text_entity
from tests.support.relayhome import LIST, RelayHome
from tests.support.smtpsink import SmtpSink

MEMBERS = 12


def _start(config: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    offset = len(log.read_bytes()) if log.exists() else 0
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "--config", str(config), "serve"],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_bytes()[offset:].decode(errors="replace").splitlines():
            if "listening" in line and "port=" in line:
                port = int(line.rsplit("port=", 1)[1].split()[0])
                if proc.poll() is None:
                    return proc, port
        if proc.poll() is not None:
            raise AssertionError(f"relay exited early:\n{log.read_text()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"relay did not start:\n{log.read_text()}")


@pytest.mark.slow
def test_sigkill_mid_fanout_loses_nothing(tmp_path: Path, keys: KeyFactory):
    sink = SmtpSink(delay=0.15).start()
    try:
        home = RelayHome(tmp_path, keys, smarthost=f"127.0.0.1:{sink.port}")
        src = keys.make("src", "src@example.org")
        home.add_sender(src)
        members = [keys.make(f"crash{n}", f"security@crash{n}.example") for n in range(MEMBERS)]
        for member in members:
            home.add_member(member)
        post = pgp_mime_signed(
            home.client(src),
            src.fingerprint,
            text_entity("Embargoed details.\n"),
            subject="[EMBARGOED] test",
            sender=src.address,
            to=LIST,
        )
        log = tmp_path / "relay.log"
        proc, port = _start(home.config_path, log)
        try:
            _, reply = _send(port, post)
            assert reply.startswith("2.0.0")
            # Kill the relay once some, but not all, copies were accepted by the sink.
            deadline = time.monotonic() + 60
            while len(sink.messages) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            served_before = len(sink.messages)
            assert 0 < served_before < MEMBERS, served_before
        finally:
            if proc.poll() is None:
                proc.kill()

        with home.db.transaction() as s:
            unsent = (
                s.execute(select(Delivery).where(Delivery.status != DeliveryStatus.SENT))
                .scalars()
                .all()
            )
            assert unsent, "the kill came too late to test anything"

        proc, _ = _start(home.config_path, log)
        try:
            sink.wait_for(MEMBERS, timeout=120)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with home.db.transaction() as s:
                    statuses = set(s.execute(select(Delivery.status)).scalars())
                if statuses == {DeliveryStatus.SENT}:
                    break
                time.sleep(0.1)
            assert statuses == {DeliveryStatus.SENT}
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        assert "recovered" in log.read_text()
    finally:
        sink.stop()

    copies: dict[str, list[bytes]] = defaultdict(list)
    for message in sink.messages:
        copies[message.rcpt_tos[0]].append(message.data)
    assert set(copies) == {m.address for m in members}
    with home.db.transaction() as s:
        recorded = {d.recipient: d.copy_message_id for d in s.execute(select(Delivery)).scalars()}
    for member in members:
        # A copy in flight at the kill may arrive twice; it then carries the same Message-ID.
        ids = {
            email.message_from_bytes(c, policy=email.policy.default)["Message-ID"]
            for c in copies[member.address]
        }
        assert ids == {recorded[member.address]}
        assert len(copies[member.address]) <= 2
        opened = OpenedCopy(home.client(member), copies[member.address][0])
        assert opened.signer == home.list_fpr
        assert "Embargoed details." in opened.text


def _send(port: int, data: bytes) -> tuple[dict, str]:
    import asyncio

    async def go() -> tuple[dict, str]:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30)
        await smtp.connect()
        try:
            return await smtp.sendmail("src@example.org", [LIST], data)
        finally:
            smtp.close()

    return asyncio.run(go())
