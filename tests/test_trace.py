"""`relay trace`: from a leaked text back to the advisory and, where the copy's
reference or Message-ID survived, to the recipient whose copy it was. Real gpg, SMTP
and SQLite."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import select

from relay.cli.root import cli
from relay.model import Delivery
from tests.support.keys import KeyFactory
from tests.support.mail import OpenedCopy, pgp_mime_signed, text_entity
from tests.support.relayhome import LIST, RelayHome, RelayThread
from tests.support.relayhome import smtp_post as _post
from tests.support.smtpsink import SmtpSink

ROOT = Path(__file__).resolve().parent.parent
ADVISORY = (ROOT / "tests/data/matcher/k8s-CVE-2024-10220-oss-security-email.txt").read_text()
BODY = ADVISORY.split("\n\n", 1)[1]


def _trace(home: RelayHome, tmp_path: Path, text: str) -> dict:
    leak = tmp_path / "leak.txt"
    leak.write_text(text)
    result = CliRunner().invoke(
        cli, ["--config", str(home.config_path), "trace", str(leak), "--json"]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_trace_names_the_advisory_and_the_recipient_of_a_leaked_copy(
    tmp_path: Path, keys: KeyFactory
):
    with SmtpSink() as sink:
        home = RelayHome(tmp_path, keys, smarthost=f"127.0.0.1:{sink.port}")
        src = keys.make("src", "src@example.org")
        home.add_sender(src)
        members = [keys.make(f"distro{n}", f"security@distro{n}.example") for n in range(2)]
        for member in members:
            home.add_member(member)
        lift = (datetime.now(UTC) + timedelta(days=9)).isoformat(timespec="minutes")
        post = pgp_mime_signed(
            home.client(src),
            src.fingerprint,
            text_entity(f"X-Advisory: CVE-2026-7001\nX-Embargo-Until: {lift}\n\n{BODY}"),
            subject="[EMBARGOED] CVE-2026-7001: gitRepo volume",
            sender=src.address,
            to=LIST,
        )
        with RelayThread(home.settings) as relay:
            assert relay.run(_post(relay.port, post))[0] == 250
            received = sink.wait_for(2, timeout=60)

    leaked = next(m for m in received if m.rcpt_tos == (members[1].address,))
    # The whole copy was passed on: its Message-ID names the recipient.
    whole = _trace(home, tmp_path, leaked.data.decode())
    assert [c["recipient"] for c in whole["copies"]] == [members[1].address]
    assert whole["copies"][0]["advisory"] == "CVE-2026-7001"

    # A decrypted excerpt, re-wrapped and quoted: the advisory, without a recipient.
    opened = OpenedCopy(home.client(members[1]), leaked.data).text
    paragraph = opened.split("Hello Kubernetes Community,")[1].split("Please note")[0]
    excerpt = "\n".join("> " + line for line in textwrap.wrap(" ".join(paragraph.split()), 45))
    part = _trace(home, tmp_path, f"Look what I got:\n\n{excerpt}\n")
    assert [a["advisory"] for a in part["advisories"]] == ["CVE-2026-7001"]
    assert part["advisories"][0]["score"] > 0.5 and part["copies"] == []

    unrelated = _trace(home, tmp_path, "Kubernetes volumes are great; upgrade often.\n")
    assert unrelated == {"advisories": [], "copies": [], "messages": []}

    # The decrypted text pasted with the notice at its top: the reference names the copy.
    with home.db.transaction() as s:
        reference = s.execute(
            select(Delivery.reference).where(Delivery.recipient == members[1].address)
        ).scalar_one()
    pasted = _trace(home, tmp_path, opened)
    assert [(c["recipient"], c["evidence"]) for c in pasted["copies"]] == [
        (members[1].address, reference)
    ]
    assert [a["advisory"] for a in pasted["advisories"]] == ["CVE-2026-7001"]

    # Retyped from a screenshot: lower case, and O for 0 or I for 1 (Crockford look-alikes).
    retyped = reference.lower().replace("0", "o").replace("1", "i")
    found = _trace(home, tmp_path, f"someone sent me copy {retyped} of something\n")
    assert [c["recipient"] for c in found["copies"]] == [members[1].address]
    forged = _trace(home, tmp_path, "copy ER-0000-0000-0000 of something\n")
    assert forged["copies"] == []
