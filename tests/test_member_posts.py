"""Members post to the list: status reports on an advisory, replies to the list's copies,
and the list's posting policy (whole list, or held for a moderator). Real gpg, real SMTP.
"""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from relay.cli.root import cli
from relay.model import Contribution, Delivery, DeliveryStatus, Message, MessageBody
from tests.support.keys import KeyFactory
from tests.support.mail import OpenedCopy, pgp_mime_signed, text_entity
from tests.support.relayhome import LIST, RelayHome, RelayThread, distributors
from tests.support.relayhome import smtp_post as _post
from tests.support.smtpsink import SmtpSink

ROOT = Path(__file__).resolve().parent.parent
LIFT = (datetime.now(UTC) + timedelta(days=9)).replace(microsecond=0)


def _home(tmp_path: Path, keys: KeyFactory, sink: SmtpSink, policy: str | None = None):
    extra = f'\n[embargo]\npolicy = "{ROOT / "relay" / "policies" / policy}"\n' if policy else ""
    return distributors(tmp_path, keys, sink.port, extra=extra)


def _signed(home: RelayHome, key, body: str, subject: str, **headers: str) -> bytes:
    """A member's signed post; threading fields go inside the signature (protected)."""
    threading = {n: headers.pop(n) for n in ("In-Reply-To", "References") if n in headers}
    data = pgp_mime_signed(
        home.client(key),
        key.fingerprint,
        text_entity(body, subject=subject, protected=threading),
        subject=subject,
        sender=key.address,
        to=LIST,
    )
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode()
    return extra + data


def _advisory(home: RelayHome, keys: KeyFactory, relay: RelayThread) -> None:
    body = f"X-Advisory: CVE-2026-8888\nX-Embargo-Until: {LIFT.isoformat()}\n\nThe flaw.\n"
    code, reply = relay.run(
        _post(relay.port, _signed(home, keys.make("src"), body, "[EMBARGOED] CVE-2026-8888"))
    )
    assert code == 250, reply


def test_member_reply_reports_status_and_reaches_the_whole_list(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    home = _home(tmp_path, keys, sink)
    distro0 = keys.make("distro0", "security@distro0.example")
    with RelayThread(home.settings) as relay:
        _advisory(home, keys, relay)
        first = sink.wait_for(2, timeout=60)
        own_copy = next(m for m in first if m.rcpt_tos == (distro0.address,))
        copy_id = email.message_from_bytes(own_copy.data, policy=email.policy.default)["Message-ID"]
        reply = _signed(
            home,
            distro0,
            "X-Status: tested-no-issues\n\nWe built and tested the patch on 1.30 and 1.31.\n",
            "Re: [...]",
            **{"In-Reply-To": copy_id},
        )
        code, text = relay.run(_post(relay.port, reply, sender=distro0.address))
        assert code == 250, text
        received = sink.wait_for(4, timeout=60)
    with home.db.transaction() as s:
        (status,) = s.execute(select(Contribution)).scalars().all()
        assert (status.advisory_id, status.status) == ("CVE-2026-8888", "tested-no-issues")
        assert "1.30 and 1.31" in (status.text or "")
        post = s.execute(
            select(Message).where(Message.signer_fingerprint == distro0.fingerprint)
        ).scalar_one()
        assert post.advisory_id == "CVE-2026-8888"
    for n in range(2):
        member = keys.make(f"distro{n}", f"security@distro{n}.example")
        copies = [
            OpenedCopy(home.client(member), m.data)
            for m in received[2:]
            if m.rcpt_tos == (member.address,)
        ]
        (copy,) = copies
        assert copy.signer == home.list_fpr
        assert "We built and tested the patch" in copy.text
        assert "X-Status:" not in copy.text


def test_moderated_member_post_is_held_until_released(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    home = _home(tmp_path, keys, sink, policy="kubernetes-distributors.toml")
    distro1 = keys.make("distro1", "security@distro1.example")
    runner = CliRunner()
    config = ["--config", str(home.config_path)]
    with RelayThread(home.settings) as relay:
        _advisory(home, keys, relay)
        sink.wait_for(2, timeout=60)
        post = _signed(
            home, distro1, "A question about the mitigation.\n", "Question on CVE-2026-8888"
        )
        assert relay.run(_post(relay.port, post, sender=distro1.address))[0] == 250
        (notice,) = sink.wait_for(3, timeout=60)[2:]  # the moderators are told, nobody else
        assert notice.rcpt_tos == ("src@example.org",)
        opened = OpenedCopy(home.client(keys.make("src")), notice.data)
        assert "awaits moderation" in opened.root["Subject"]
        assert "A question about the mitigation" not in opened.text

        listed = runner.invoke(cli, [*config, "held", "list", "--json"])
        assert listed.exit_code == 0, listed.output
        held_id = __import__("json").loads(listed.output)[0]["id"]
        with home.db.transaction() as s:
            statuses = (
                s.execute(select(Delivery.status).where(Delivery.message_id == held_id))
                .scalars()
                .all()
            )
        assert statuses == [DeliveryStatus.HELD] * 2

        released = runner.invoke(cli, [*config, "held", "release", held_id])
        assert released.exit_code == 0, released.output
        relay.relay.dispatcher.wake()
        received = sink.wait_for(5, timeout=60)
    texts = [
        OpenedCopy(home.client(keys.make(f"distro{n}")), m.data).text
        for m in received[3:]
        for n in range(2)
        if m.rcpt_tos == (f"security@distro{n}.example",)
    ]
    assert len(texts) == 2 and all("A question about the mitigation" in t for t in texts)
    again = runner.invoke(cli, [*config, "held", "release", held_id])
    assert again.exit_code == 1 and "no post" in again.output


def test_rejected_post_reaches_nobody(tmp_path: Path, keys: KeyFactory, sink: SmtpSink):
    home = _home(tmp_path, keys, sink, policy="kubernetes-distributors.toml")
    distro0 = keys.make("distro0", "security@distro0.example")
    runner = CliRunner()
    with RelayThread(home.settings) as relay:
        _advisory(home, keys, relay)
        sink.wait_for(2, timeout=60)
        post = _signed(home, distro0, "Off-topic.\n", "Re: CVE-2026-8888")
        assert relay.run(_post(relay.port, post, sender=distro0.address))[0] == 250
        sink.wait_for(3, timeout=60)
        with home.db.transaction() as s:
            held_id = s.execute(
                select(Message.id).where(Message.signer_fingerprint == distro0.fingerprint)
            ).scalar_one()
        result = runner.invoke(
            cli, ["--config", str(home.config_path), "held", "reject", held_id, "--reason", "x"]
        )
        assert result.exit_code == 0, result.output
        relay.run(relay.relay.dispatcher.run_once())
    assert len(sink.messages) == 3
    with home.db.transaction() as s:
        statuses = (
            s.execute(select(Delivery.status).where(Delivery.message_id == held_id)).scalars().all()
        )
    assert statuses == [DeliveryStatus.FAILED] * 2


@pytest.mark.parametrize(
    ("body", "subject", "expected"),
    [
        (
            f"X-Advisory: CVE-2026-8888\nX-Embargo-Until: {(LIFT + timedelta(days=1)).isoformat()}"
            "\n\nLater, please.\n",
            "Re: timing",
            "550 5.7.1",
        ),
        ("Which advisory is this about?\n", "A question", "550 5.6.0"),
        ("X-Advisory: CVE-2099-0001\n\nUnknown.\n", "Re: unknown", "550 5.6.0"),
    ],
)
def test_refused_member_posts_change_nothing(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink, body: str, subject: str, expected: str
):
    home = _home(tmp_path, keys, sink)
    distro0 = keys.make("distro0", "security@distro0.example")
    with RelayThread(home.settings) as relay:
        _advisory(home, keys, relay)
        code, reply = relay.run(
            _post(relay.port, _signed(home, distro0, body, subject), sender=distro0.address)
        )
    assert f"{code} {reply}".startswith(expected)
    with home.db.transaction() as s:
        assert s.execute(select(func.count(Message.id))).scalar() == 1


def test_member_vouches_for_an_application_by_signed_post(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    from relay.app import applications

    home = _home(tmp_path, keys, sink)
    distro0 = keys.make("distro0", "security@distro0.example")
    text = (ROOT / "tests" / "data" / "applications" / "complete.md").read_text()
    view = applications.submit(home.db, text, "cli:test")
    with RelayThread(home.settings) as relay:
        code, reply = relay.run(
            _post(
                relay.port,
                _signed(home, distro0, f"X-Vouch: {view.id}\n\nWe know them.\n", "Vouch"),
                sender=distro0.address,
            )
        )
    assert code == 250, reply
    detail = applications.application_detail(home.db, view.id)
    assert [v.member for v in detail.application.vouches] == [distro0.address]
    with home.db.transaction() as s:
        assert s.execute(select(func.count(Delivery.id))).scalar() == 0  # a command, not a post
    assert sink.messages == []


def _cc_post(home: RelayHome, keys: KeyFactory, cc: str) -> bytes:
    src = keys.make("src", "src@example.org")
    body = (
        f"X-Advisory: CVE-2026-8888\nX-Embargo-Until: {LIFT.isoformat()}\n\n"
        "The flaw, for our managers too.\n"
    )
    return _signed(home, src, body, "[EMBARGOED] CVE-2026-8888", Cc=cc)


def test_post_copied_to_an_outsider_is_refused_under_the_kubernetes_policy(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    from relay.model import Advisory, Incident, MessageKind

    home = _home(tmp_path, keys, sink, policy="kubernetes-distributors.toml")
    contact = keys.make("contact", "security@example.org")
    home.add_sender(contact)
    with RelayThread(home.settings) as relay:
        code, reply = relay.run(_post(relay.port, _cc_post(home, keys, "boss@corp.example")))
        assert code == 550 and reply.startswith("5.7.1")
        assert "boss@corp.example" in reply and "CVE-2026-8888" in reply and "UTC" in reply
        (report,) = sink.wait_for(1, timeout=60)
    with home.db.transaction() as s:
        # Refused: it opened no advisory and went to no member ...
        assert s.execute(select(Advisory)).scalars().all() == []
        (kept,) = s.execute(select(Message).where(Message.kind == MessageKind.REFUSED)).scalars()
        assert s.execute(select(Delivery).where(Delivery.message_id == kept.id)).first() is None
        # ... but the copy the sender's own mail system sent to boss@ is reported all the same.
        (incident,) = s.execute(select(Incident)).scalars().all()
        assert (incident.advisory_id, incident.kind) == ("CVE-2026-8888", "external-cc")
        assert incident.recipients == ["boss@corp.example"] and incident.message_id == kept.id
    assert report.rcpt_tos == ("security@example.org",)
    text = OpenedCopy(home.client(contact), report.data).text
    assert "CVE-2026-8888: not on the list" in text and "boss@corp.example" in text
    assert "refused post, kept as evidence" in text and "The list refused the post" in text


def test_post_copied_to_an_outsider_is_distributed_and_the_leak_reported_by_default(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    from relay.model import Incident

    home = _home(tmp_path, keys, sink)
    contact = keys.make("contact", "security@example.org")
    home.add_sender(contact)
    with RelayThread(home.settings) as relay:
        code, reply = relay.run(
            _post(
                relay.port,
                _cc_post(home, keys, "Boss <boss@corp.example>, security@distro1.example"),
            )
        )
        assert code == 250, reply
        received = sink.wait_for(3, timeout=60)  # the two members, and the leak report
    with home.db.transaction() as s:
        (incident,) = s.execute(select(Incident)).scalars().all()
        assert incident.recipients == ["boss@corp.example"]  # the member in Cc is fine
        assert incident.advisory_id == "CVE-2026-8888"
    report = next(
        m
        for m in received
        if m.rcpt_tos == ("security@example.org",)
        and b"BEGIN PGP MESSAGE" in m.data
        and "boss@corp.example" in OpenedCopy(home.client(contact), m.data).text
    )
    text = OpenedCopy(home.client(contact), report.data).text
    assert "CVE-2026-8888" in text and "src@example.org" in text


ADVISORY_TEXT = ROOT / "tests" / "data" / "matcher" / "k8s-CVE-2024-10220-oss-security-email.txt"


GITREPO_BODY = ADVISORY_TEXT.read_text().split("\n\n", 1)[1]


def _quoted_rewrapped(text: str, width: int = 38) -> str:
    import textwrap

    words = " ".join(text.split())
    return "\n".join("> " + line for line in textwrap.wrap(words, width))


def _gitrepo_advisory(home: RelayHome, src) -> bytes:  # type: ignore[no-untyped-def]
    """The SRC's embargoed CVE-2026-9999 post, with a real advisory's text (GITREPO_QUOTE is
    part of it as a reply quotes it: re-wrapped, '> '-prefixed)."""
    return _signed(
        home,
        src,
        f"X-Advisory: CVE-2026-9999\nX-Embargo-Until: {LIFT.isoformat()}\n\n{GITREPO_BODY}",
        "[EMBARGOED] CVE-2026-9999: command execution through gitRepo volume",
    )


GITREPO_QUOTE = _quoted_rewrapped(GITREPO_BODY.split("Am I vulnerable?")[0].split("\n\n", 1)[1])


def test_unlabelled_member_post_quoting_embargoed_text_is_attributed_to_its_advisory(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    home = _home(tmp_path, keys, sink)
    src, distro0 = keys.make("src"), keys.make("distro0", "security@distro0.example")
    advisory_post = _gitrepo_advisory(home, src)
    quoting = f"Our team looked at this part:\n\n{GITREPO_QUOTE}\n\nAll good here.\n"
    unrelated = (
        "We keep seeing questions about kube-apiserver vulnerabilities in Services and how\n"
        "distributions should schedule their releases. Any guidance for next quarter?\n"
    )
    with RelayThread(home.settings) as relay:
        assert relay.run(_post(relay.port, advisory_post))[0] == 250
        code, reply = relay.run(
            _post(relay.port, _signed(home, distro0, quoting, "our notes"), sender=distro0.address)
        )
        assert code == 250, reply
        refused, why = relay.run(
            _post(
                relay.port, _signed(home, distro0, unrelated, "a question"), sender=distro0.address
            )
        )
    assert refused == 550 and why.startswith("5.6.0")
    with home.db.transaction() as s:
        post = s.execute(
            select(Message).where(Message.signer_fingerprint == distro0.fingerprint)
        ).scalar_one()
    assert post.advisory_id == "CVE-2026-9999"


def test_the_same_copied_post_after_the_lift_is_no_leak(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    from relay.model import Incident

    home = _home(tmp_path, keys, sink, policy="kubernetes-distributors.toml")
    with RelayThread(home.settings) as relay:
        _advisory(home, keys, relay)
        sink.wait_for(2, timeout=60)
        before = relay.run(_post(relay.port, _cc_post(home, keys, "boss@corp.example")))
        assert before[0] == 550
        relay.lift("CVE-2026-8888")
        public = _signed(
            home,
            keys.make("src"),
            "X-Advisory: CVE-2026-8888\n\nNow public.\n",
            "[Security Advisory] CVE-2026-8888",
            Cc="boss@corp.example",
        )
        after = relay.run(_post(relay.port, public))
    assert after[0] == 250, after
    with home.db.transaction() as s:  # the refused copy before the lift, nothing after
        (incident,) = s.execute(select(Incident)).scalars().all()
        assert incident.at < datetime.now(UTC) and incident.kind == "external-cc"


def test_a_post_about_a_lifted_advisory_that_quotes_an_embargoed_one_is_a_leak_of_that_one(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    from relay.model import Incident

    home = _home(tmp_path, keys, sink)  # the built-in default: distribute and report
    contact = keys.make("contact", "security@example.org")
    home.add_sender(contact)
    src, distro0 = keys.make("src"), keys.make("distro0", "security@distro0.example")
    embargoed = _gitrepo_advisory(home, src)
    public = _signed(
        home,
        src,
        f"X-Advisory: CVE-2026-1111\nX-Embargo-Until: {LIFT.isoformat()}\n\nA minor issue.\n",
        "[EMBARGOED] CVE-2026-1111: a minor issue",
    )
    reply = (
        "X-Advisory: CVE-2026-1111\n\nNow that 1111 is public, compare it with this one:\n\n"
        f"{GITREPO_QUOTE}\n"
    )
    with RelayThread(home.settings) as relay:
        assert relay.run(_post(relay.port, embargoed))[0] == 250
        assert relay.run(_post(relay.port, public))[0] == 250
        relay.lift("CVE-2026-1111")
        code, why = relay.run(
            _post(
                relay.port,
                _signed(home, distro0, reply, "Re: CVE-2026-1111", Cc="press@news.example"),
                sender=distro0.address,
            )
        )
        assert code == 250, why
    with home.db.transaction() as s:
        (incident,) = s.execute(select(Incident)).scalars().all()
        # Not CVE-2026-1111, which the post names and which is public: the one it quotes.
        assert (incident.advisory_id, incident.kind) == ("CVE-2026-9999", "external-cc")
        assert incident.recipients == ["press@news.example"]
        assert incident.member.address == distro0.address
        assert incident.matched["score"] > 0.5 and incident.matched["excerpts"]


def test_a_refusal_whose_leak_cannot_be_recorded_is_a_temporary_failure(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
):
    from relay.app import incidents
    from relay.model import Incident

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    home = _home(tmp_path, keys, sink, policy="kubernetes-distributors.toml")
    monkeypatch.setattr(incidents, "record_leak", broken)
    with RelayThread(home.settings, dispatch=False) as relay:
        code, reply = relay.run(_post(relay.port, _cc_post(home, keys, "boss@corp.example")))
    # Not a 550 that the report never followed: the sender keeps the post and tries again.
    assert (code, reply[:5]) == (451, "4.3.0")
    with home.db.transaction() as s:
        assert s.execute(select(func.count(Message.id))).scalar() == 0
        assert s.execute(select(func.count(Incident.id))).scalar() == 0
        assert s.execute(select(func.count()).select_from(MessageBody)).scalar() == 0
