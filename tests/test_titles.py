"""An advisory's title without what a Subject adds around it (list tags, "Re:", the ID),
so `relay advisory show` names the advisory once: the pure function, then a signed post
over real SMTP and the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from relay.app.advisories import plain_title
from relay.cli.root import cli
from relay.model import Advisory
from tests.support.keys import KeyFactory
from tests.support.mail import pgp_mime_signed, text_entity
from tests.support.relayhome import LIST, RelayThread, distributors, smtp_post
from tests.support.smtpsink import SmtpSink

ID = "CVE-2026-0000"


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("[EMBARGOED] CVE-2026-0000: Kubelet escape", "Kubelet escape"),
        ("CVE-2026-0000: [EMBARGOED] CVE-2026-0000: Kubelet escape", "Kubelet escape"),
        ("Re: Fwd: [SECURITY][EMBARGOED] cve-2026-0000 - Kubelet escape", "Kubelet escape"),
        ("RE:[k8s-distributors] CVE-2026-0000 \u2013 Kubelet escape", "Kubelet escape"),
        ("Kubelet escape (CVE-2026-0000)", "Kubelet escape"),
        ("Kubelet escape [CVE-2026-0000]", "Kubelet escape"),
        ("Kubelet escape - CVE-2026-0000", "Kubelet escape"),
        ("Title CVE-2026-0000", "Title CVE-2026-0000"),  # part of the sentence, maybe
        ("  Kubelet   escape  ", "Kubelet escape"),
        ("Kubelet escape", "Kubelet escape"),
        # What is the title's own stays.
        ("Escape in the [kubelet] parser", "Escape in the [kubelet] parser"),
        ("Report: kubelet escape", "Report: kubelet escape"),
        ("CVE-2026-00001: another advisory's ID", "CVE-2026-00001: another advisory's ID"),
        ("CVE-2026-0000.1 a longer ID", "CVE-2026-0000.1 a longer ID"),
        ("Escape, see also CVE-2026-1111", "Escape, see also CVE-2026-1111"),
        # Nothing but tags and the ID: no title.
        ("[EMBARGOED] CVE-2026-0000", ""),
        ("CVE-2026-0000", ""),
        ("", ""),
        (None, ""),
    ],
)
def test_plain_title(title: str | None, expected: str) -> None:
    assert plain_title(title, ID) == expected


def test_without_an_id_only_the_tags_go() -> None:
    assert plain_title("[EMBARGOED] CVE-2026-0000: Kubelet", None) == "CVE-2026-0000: Kubelet"


def test_a_subject_made_title_is_stored_and_shown_with_the_id_once(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
) -> None:
    home = distributors(tmp_path, keys, sink.port, members=1)
    src = keys.make("src", "src@example.org")
    subject = f"[EMBARGOED] {ID}: Kubelet sandbox escape"
    post = pgp_mime_signed(
        home.client(src),
        src.fingerprint,
        text_entity(f"X-Advisory: {ID}\nX-Embargo-Until: +10d\n\nThe flaw.\n", subject=subject),
        subject="[...]",
        sender=src.address,
        to=LIST,
    )
    with RelayThread(home.settings, dispatch=False) as relay:
        assert relay.run(smtp_post(relay.port, post))[0] == 250
    with home.db.transaction() as s:
        assert s.get_one(Advisory, ID).title == "Kubelet sandbox escape"

    def relay_cli(*args: str) -> str:
        result = CliRunner().invoke(cli, ["--config", str(home.config_path), *args])
        assert result.exit_code == 0 and "Traceback" not in result.output, result.output
        return result.stdout

    [line] = [
        x for x in relay_cli("advisory", "show", ID).splitlines() if x.startswith("advisory:")
    ]
    assert line.split(None, 1)[1] == f"{ID}: Kubelet sandbox escape"

    # A title stored with its tags (before they were taken off) is shown without them.
    with home.db.transaction() as s:
        s.execute(update(Advisory).where(Advisory.id == ID).values(title=subject))
    shown = relay_cli("advisory", "show", ID)
    [line] = [x for x in shown.splitlines() if x.startswith("advisory:")]
    assert line.split(None, 1)[1] == f"{ID}: Kubelet sandbox escape"
    [row] = [x for x in relay_cli("advisory", "list").splitlines() if ID in x]
    assert row.count(ID) == 1 and "Kubelet sandbox escape" in row and "EMBARGOED" not in row


def test_an_advisory_whose_title_is_its_id_shows_the_id_alone(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
) -> None:
    home = distributors(tmp_path, keys, sink.port, members=0)
    result = CliRunner().invoke(
        cli, ["--config", str(home.config_path), "advisory", "create", ID, "--title", f"[X] {ID}"]
    )
    assert result.exit_code == 0, result.output
    with home.db.transaction() as s:
        assert s.execute(select(Advisory.title)).scalar_one() == ID
    shown = CliRunner().invoke(cli, ["--config", str(home.config_path), "advisory", "show", ID])
    [line] = [x for x in shown.stdout.splitlines() if x.startswith("advisory:")]
    assert line.split(None, 1)[1] == ID
