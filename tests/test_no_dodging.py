"""Embargoed text cannot be dodged: tried as an insider who knows how the matcher works.

End to end, real gpg, real SMTP on loopback, real SQLite, the Kubernetes policy: a member
quotes an embargoed advisory in every dress of the evasion corpus (tests/support/evasion.py)
and by every path out (Cc, Bcc, Resent-*, Reply-To, a vouch, naming a lifted advisory, a
grant for another advisory, the public text at a lift). The text never reaches an outsider
before the lift, and each attempt is an incident against the member who signed the post,
reported to the security contact. What the relay cannot read fails closed; unrelated mail
on the same topics passes untouched. Addresses from posts are plain addresses.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from relay.cli.root import cli
from relay.model import Advisory, Delivery, DeliveryStatus, Grant, Incident, Member, Message
from tests.support import evasion
from tests.support import keys as support
from tests.support.keys import KeyFactory
from tests.support.mail import crlf, pgp_mime_signed, text_entity
from tests.support.relayhome import CONTACT, LIST, RelayHome, RelayThread, distributors
from tests.support.relayhome import smtp_post as _post
from tests.support.smtpsink import SmtpSink

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "relay" / "policies" / "kubernetes-distributors.toml"
LIFT = (datetime.now(UTC) + timedelta(days=12)).replace(microsecond=0)
FILES = sorted(evasion.advisory_texts())
# One embargoed advisory per public advisory text; the last one is lifted in the tests.
ADVISORIES = {name: f"CVE-2026-{7000 + n}" for n, name in enumerate(FILES)}
LIFTED_FILE = FILES[-1]
LIFTED = ADVISORIES[LIFTED_FILE]
OUTSIDER = "boss@corp.example"
UNRELATED = (
    "We rebuilt our kubelet packages for the 1.31 branch today; the container runtime\n"
    "update is unrelated to any advisory and went to our stable channel after the usual\n"
    "two-day soak. Our volume plugin tests on the new kernel took longer than planned, so\n"
    "the next point release of the distribution slips to Friday. Thanks for the reviews.\n"
)


def _home(tmp_path: Path, keys: KeyFactory, sink: SmtpSink, extra: str = "") -> RelayHome:
    home = distributors(
        tmp_path, keys, sink.port, extra=f'\n[embargo]\npolicy = "{POLICY}"\n{extra}'
    )
    home.add_sender(keys.make("contact", CONTACT))  # leak reports are encrypted to it
    return home


def _sign(home: RelayHome, key: support.TestKey, entity: bytes, **headers: str) -> bytes:
    data = pgp_mime_signed(
        home.client(key), key.fingerprint, entity, subject="[...]", sender=key.address, to=LIST
    )
    return "".join(f"{n}: {v}\r\n" for n, v in headers.items()).encode() + data


def _with_keywords(entity: bytes, **keywords: str) -> bytes:
    """Keywords as header fields of the signed entity (the form that suits any body)."""
    lines = "".join(f"{name.replace('_', '-')}: {value}\r\n" for name, value in keywords.items())
    return lines.encode() + entity


def _announce(home: RelayHome, keys: KeyFactory, relay: RelayThread) -> None:
    """The SRC posts every advisory text under embargo, then lifts one."""
    src = keys.make("src", "src@example.org")
    for name, text in evasion.advisory_texts().items():
        body = f"X-Advisory: {ADVISORIES[name]}\nX-Embargo-Until: {LIFT.isoformat()}\n\n{text}"
        code, reply = relay.run(_post(relay.port, _sign(home, src, text_entity(body))))
        assert code == 250, reply
    relay.lift(LIFTED)


def _incidents(home: RelayHome) -> list[tuple[str, str, list[str], str | None]]:
    with home.db.transaction() as s:
        members = {m.id: m.address for m in s.execute(select(Member)).scalars()}
        return [
            (i.advisory_id, members.get(i.member_id or -1, ""), i.recipients, i.report_message_id)
            for i in s.execute(select(Incident).order_by(Incident.id)).scalars()
        ]


def _sendable(text: str, names: tuple[str, ...]) -> bytes:
    """The dressed entity, with a transfer encoding added where its lines would be longer
    than SMTP carries (letter-spacing makes long lines), as a mail client would."""
    entity = evasion.evasive_entity(text, names)
    if max(map(len, entity.split(b"\r\n"))) <= 998:
        return entity
    extra = "base64" if "quoted-printable" in names else "quoted-printable"
    if extra in names:
        extra = "re-wrap"
    return evasion.evasive_entity(text, (*names, extra))


def _embargoed_excerpts(count: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    found = [e for e in evasion.excerpts(rng, count * 3) if e[0] != LIFTED_FILE]
    return found[:count]


def test_every_dress_of_a_quote_cc_to_an_outsider_is_refused_and_reported(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    home = _home(tmp_path, keys, sink)
    distro0 = keys.make("distro0", "security@distro0.example")
    rng = random.Random(7)
    dresses = [(name,) for name in evasion.TRANSFORMS] + rng.sample(list(evasion.PAIRS), 12)
    quotes = _embargoed_excerpts(len(dresses), seed=11)
    with RelayThread(home.settings) as relay:
        _announce(home, keys, relay)
        expected = []
        for n, (names, (source, excerpt)) in enumerate(zip(dresses, quotes, strict=True)):
            entity = _sendable(excerpt, names)
            if n % 2:  # half name nothing, half name the lifted advisory
                entity = _with_keywords(entity, X_Advisory=LIFTED)
            post = _sign(home, distro0, entity, Cc=OUTSIDER)
            code, reply = relay.run(_post(relay.port, post, sender=distro0.address))
            assert (code, reply[:5]) == (550, "5.7.1"), (names, reply)
            expected.append(ADVISORIES[source])
    found = _incidents(home)
    assert [advisory for advisory, *_ in found] == expected
    for _, member, recipients, report in found:
        assert member == distro0.address and recipients == [OUTSIDER] and report is not None


def test_every_path_out_is_checked(tmp_path: Path, keys: KeyFactory, sink: SmtpSink):
    home = _home(tmp_path, keys, sink)
    distro0 = keys.make("distro0", "security@distro0.example")
    runner = CliRunner()
    config = ["--config", str(home.config_path)]
    application = ROOT / "tests" / "data" / "applications" / "complete.md"
    (source, excerpt), *_ = _embargoed_excerpts(1, seed=3)
    quoted = ADVISORIES[source]
    with RelayThread(home.settings) as relay:
        _announce(home, keys, relay)
        submitted = runner.invoke(cli, [*config, "application", "submit", str(application)])
        assert submitted.exit_code == 0, submitted.output
        with home.db.transaction() as s:
            from relay.model import Application

            app_id = s.execute(select(Application.id)).scalar_one()
        paths = {
            "vouch": ({"X_Vouch": str(app_id)}, {"Cc": OUTSIDER}),
            "bcc": ({}, {"Bcc": OUTSIDER}),
            "resent-to": ({}, {"Resent-To": OUTSIDER}),
            "resent-cc": ({}, {"Resent-Cc": f"Boss <{OUTSIDER}>"}),
            "reply-to": ({}, {"Reply-To": OUTSIDER}),
            "status": ({"X_Status": "reviewing", "X_Advisory": LIFTED}, {"Cc": OUTSIDER}),
        }
        for name, (keywords, headers) in paths.items():
            # A signed field of its own per path: the same entity signed twice in one
            # second would be one signature, refused the second time as a replay.
            entity = f"X-Path: {name}\r\n".encode() + evasion.evasive_entity(
                excerpt, ("zero-width",)
            )
            entity = _with_keywords(entity, **keywords)
            post = _sign(home, distro0, entity, **headers)
            code, reply = relay.run(_post(relay.port, post, sender=distro0.address))
            assert (code, reply[:5]) == (550, "5.7.1"), (name, reply)
    found = _incidents(home)
    assert len(found) == len(paths)
    assert {(advisory, member) for advisory, member, *_ in found} == {(quoted, distro0.address)}
    with home.db.transaction() as s:  # the refused vouch changed nothing
        from relay.model import Application

        assert s.execute(select(Application.vouches)).scalar_one() == []


def test_unreadable_content_to_an_outsider_fails_closed(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    home = _home(tmp_path, keys, sink)
    distro0 = keys.make("distro0", "security@distro0.example")
    # Encrypted to a key the relay does not hold: nobody here can read what it says.
    secret = home.client(distro0).encrypt(b"the details, for your eyes", [distro0.fingerprint])
    assert secret.startswith(b"-----BEGIN PGP MESSAGE-----")
    entity = (
        crlf(
            b'Content-Type: multipart/mixed; boundary="x"\n\n--x\n'
            b"Content-Type: text/plain\n\nSee the attachment.\n--x\n"
            b'Content-Type: application/octet-stream; name="details.asc"\n'
            b'Content-Disposition: attachment; filename="details.asc"\n\n'
        )
        + crlf(secret)
        + b"\r\n--x--\r\n"
    )
    with RelayThread(home.settings) as relay:
        _announce(home, keys, relay)
        post = _sign(home, distro0, _with_keywords(entity, X_Advisory=LIFTED), Cc=OUTSIDER)
        code, reply = relay.run(_post(relay.port, post, sender=distro0.address))
    assert code == 550 and reply.startswith("5.7.1")
    found = _incidents(home)
    embargoed = {a for f, a in ADVISORIES.items() if f != LIFTED_FILE}
    assert {advisory for advisory, *_ in found} == embargoed  # it may be any of them
    assert {member for _, member, *_ in found} == {distro0.address}


def test_unrelated_mail_on_the_same_topics_passes_untouched(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    home = _home(tmp_path, keys, sink)
    distro0 = keys.make("distro0", "security@distro0.example")
    with RelayThread(home.settings) as relay:
        _announce(home, keys, relay)
        for names in [(), ("zero-width",), ("html-nbsp",), ("gzip",)]:
            dressed = evasion.evasive_entity(UNRELATED, names)
            entity = _with_keywords(dressed, X_Advisory=LIFTED)
            post = _sign(home, distro0, entity, Cc=OUTSIDER)
            code, reply = relay.run(_post(relay.port, post, sender=distro0.address))
            assert code == 250, (names, reply)
    assert _incidents(home) == []


def _grant(home: RelayHome, relay: RelayThread, advisory: str, person: support.TestKey) -> None:
    config = ["--config", str(home.config_path)]
    share = ["share", advisory, person.address, "--key", str(person.public_file)]
    done = CliRunner().invoke(cli, [*config, *share, "--for", "security@distro0.example"])
    assert done.exit_code == 0, done.output
    with home.db.transaction() as s:
        token = s.execute(select(Grant.token).where(Grant.address == person.address)).scalar_one()
    accept = _sign(home, person, text_entity(f"X-Accept: {token}\n\nAgreed.\n"))
    assert relay.run(_post(relay.port, accept, sender=person.address))[0] == 250


@pytest.mark.parametrize("names", [("zero-width",), ("gzip",), ("homoglyphs", "octet-stream")])
def test_a_grant_for_one_advisory_never_carries_another_s_text(
    names: tuple[str, ...], tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    home = _home(tmp_path, keys, sink)
    distro0 = keys.make("distro0", "security@distro0.example")
    dev = keys.make("dev0", "dev@distro0.example")
    (source, excerpt), *_ = [e for e in _embargoed_excerpts(6, seed=5) if e[0] != FILES[0]]
    shared, quoted = ADVISORIES[FILES[0]], ADVISORIES[source]
    with RelayThread(home.settings) as relay:
        _announce(home, keys, relay)
        _grant(home, relay, shared, dev)
        entity = _with_keywords(evasion.evasive_entity(excerpt, names), X_Advisory=shared)
        post = _sign(home, distro0, entity)
        code, reply = relay.run(_post(relay.port, post, sender=distro0.address))
        assert code == 250, reply
        # The Kubernetes list moderates members' posts: a moderator lets it through.
        message_id = reply.split("Queued as ")[1].split()[0]
        config = ["--config", str(home.config_path)]
        released = CliRunner().invoke(cli, [*config, "held", "release", message_id])
        assert released.exit_code == 0, released.output
        relay.relay.dispatcher.wake()  # type: ignore[union-attr]
        _wait(lambda: _held(home, dev.address) is not None)
    held = _held(home, dev.address)
    assert held is not None and held.held_for == quoted
    found = _incidents(home)
    assert [(a, m, r) for a, m, r, _ in found] == [(quoted, distro0.address, [dev.address])]


def test_a_public_text_quoting_another_embargo_is_held_and_the_senders_told(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    public = "announce@lists.example"
    home = _home(tmp_path, keys, sink, extra=f'public_addresses = ["{public}"]\n')
    (source, excerpt), *_ = [e for e in _embargoed_excerpts(6, seed=9) if e[0] != FILES[0]]
    released, quoted = ADVISORIES[FILES[0]], ADVISORIES[source]
    text_file = tmp_path / "public.txt"
    text_file.write_text(
        "Fixed in 1.31.2.\n\n" + evasion.evasive_text(excerpt, ("zero-width",)) + "\n"
    )
    config = ["--config", str(home.config_path)]
    with RelayThread(home.settings) as relay:
        _announce(home, keys, relay)
        result = CliRunner().invoke(
            cli, [*config, "advisory", "public-text", released, str(text_file)]
        )
        assert result.exit_code == 0, result.output
        relay.lift(released)
        _wait(lambda: _held(home, public))
    held = _held(home, public)
    assert held is not None and held.held_for == quoted
    assert all(m.rcpt_tos != (public,) for m in sink.messages)
    with home.db.transaction() as s:
        (told,) = [  # subjects are sealed: read them all
            m for m in s.execute(select(Message)).scalars() if "public text held" in m.subject
        ]
        recipients = {
            d.recipient
            for d in s.execute(select(Delivery).where(Delivery.message_id == told.id)).scalars()
        }
        assert recipients == {"src@example.org", CONTACT}
        assert s.get(Advisory, quoted).state == "embargoed"  # type: ignore[union-attr]
    assert [(a, r) for a, _, r, _ in _incidents(home)] == [(quoted, [public])]


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Cc", "boss%corp.example@distro0.example"),
        ("Cc", "<@distro0.example:boss@corp.example>"),
        ("Cc", '"boss@corp.example"@distro0.example'),
        ("To", "dev@xn--dstro0-pvf.example"),  # a Cyrillic і in distro0
    ],
    ids=["percent-hack", "source-route", "quoted-at", "look-alike-domain"],
)
def test_an_address_that_is_not_plain_is_refused_and_reported(
    header: str, value: str, tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    home = _home(tmp_path, keys, sink)
    distro0 = keys.make("distro0", "security@distro0.example")
    advisory = ADVISORIES[FILES[0]]
    with RelayThread(home.settings) as relay:
        _announce(home, keys, relay)
        entity = text_entity(f"X-Advisory: {advisory}\n\nOur build is ready.\n")
        post = _sign(home, distro0, entity, **{header: value})
        code, reply = relay.run(_post(relay.port, post, sender=distro0.address))
    assert code == 550 and reply.startswith("5.1.3"), reply
    assert [(a, m) for a, m, _, _ in _incidents(home)] == [(advisory, distro0.address)]


@pytest.mark.parametrize(
    "person",
    ["boss%corp.example@distro0.example", "dev@xn--dstro0-pvf.example", "@a.example:b@c.example"],
)
def test_x_share_takes_a_plain_address_only(
    person: str, tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    home = _home(tmp_path, keys, sink)
    distro0 = keys.make("distro0", "security@distro0.example")
    dev = keys.make("dev0", "dev@distro0.example")
    advisory = ADVISORIES[FILES[0]]
    boundary = "share-1"
    entity = crlf(
        f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n--{boundary}\n'.encode()
    )
    entity += text_entity(f"X-Advisory: {advisory}\nX-Share: {person}\n\nOur dev.\n")
    entity += crlf(
        f"\n--{boundary}\nContent-Type: application/pgp-keys\n\n".encode()
        + dev.public
        + f"\n--{boundary}--\n".encode()
    )
    with RelayThread(home.settings) as relay:
        _announce(home, keys, relay)
        code, reply = relay.run(
            _post(relay.port, _sign(home, distro0, entity), sender=distro0.address)
        )
    assert code == 550 and reply.startswith("5.1.3"), reply
    with home.db.transaction() as s:
        assert s.execute(select(Grant)).scalars().all() == []


def _held(home: RelayHome, recipient: str) -> Delivery | None:
    """The latest copy held for the recipient until another advisory's lift, if any."""
    with home.db.transaction() as s:
        found = (
            s.execute(
                select(Delivery)
                .where(
                    Delivery.recipient == recipient,
                    Delivery.status == DeliveryStatus.HELD,
                    Delivery.held_for.is_not(None),
                )
                .order_by(Delivery.id.desc())
            )
            .scalars()
            .first()
        )
        if found is not None:
            s.expunge(found)
        return found


def _wait(condition, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the relay"
        time.sleep(0.1)


def test_a_copy_a_grant_holder_cannot_be_shown_to_read_fails_closed(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    """An attachment nobody here can read may carry any embargoed advisory: the colleague,
    party to one advisory only, does not get it before the others are lifted."""
    home = _home(tmp_path, keys, sink)
    distro0 = keys.make("distro0", "security@distro0.example")
    dev = keys.make("dev0", "dev@distro0.example")
    shared = ADVISORIES[FILES[0]]
    secret = home.client(distro0).encrypt(b"details", [distro0.fingerprint])
    entity = (
        crlf(
            b'Content-Type: multipart/mixed; boundary="x"\n\n--x\n'
            b"Content-Type: text/plain\n\nOur notes are attached.\n--x\n"
            b'Content-Type: application/octet-stream; name="notes.gpg"\n\n'
        )
        + crlf(secret)
        + b"\r\n--x--\r\n"
    )
    with RelayThread(home.settings) as relay:
        _announce(home, keys, relay)
        _grant(home, relay, shared, dev)
        post = _sign(home, distro0, _with_keywords(entity, X_Advisory=shared))
        code, reply = relay.run(_post(relay.port, post, sender=distro0.address))
        assert code == 250, reply
        message_id = reply.split("Queued as ")[1].split()[0]
        config = ["--config", str(home.config_path)]
        assert CliRunner().invoke(cli, [*config, "held", "release", message_id]).exit_code == 0
        relay.relay.dispatcher.wake()  # type: ignore[union-attr]
        _wait(lambda: _held(home, dev.address) is not None)
    held = _held(home, dev.address)
    others = {a for f, a in ADVISORIES.items() if f not in (LIFTED_FILE, FILES[0])}
    assert held is not None and held.held_for in others
    ((advisory, member, recipients, report),) = _incidents(home)
    assert report is not None
    assert (advisory, member, recipients) == (held.held_for, distro0.address, [dev.address])
    with home.db.transaction() as s:
        incident = s.execute(select(Incident)).scalar_one()
        assert incident.note is not None and "could not be read" in incident.note


def test_relay_share_takes_a_plain_address_only(tmp_path: Path, keys: KeyFactory, sink: SmtpSink):
    home = _home(tmp_path, keys, sink)
    dev = keys.make("dev0", "dev@distro0.example")
    config = ["--config", str(home.config_path)]
    with RelayThread(home.settings) as relay:
        _announce(home, keys, relay)
    share = ["share", ADVISORIES[FILES[0]], "dev%corp.example@distro0.example"]
    result = CliRunner().invoke(
        cli, [*config, *share, "--key", str(dev.public_file), "--for", "security@distro0.example"]
    )
    assert result.exit_code == 1 and "routes mail elsewhere" in result.output
    with home.db.transaction() as s:
        assert s.execute(select(Grant)).scalars().all() == []


def test_a_share_outside_the_team_also_reports_the_copies_it_names(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    """One refusal, two leaks: the share with an outsider and the outsider in Cc."""
    home = _home(tmp_path, keys, sink)
    distro0 = keys.make("distro0", "security@distro0.example")
    boss = keys.make("boss-key", OUTSIDER)
    advisory = ADVISORIES[FILES[0]]
    boundary = "share-2"
    entity = crlf(
        f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n--{boundary}\n'.encode()
    )
    entity += text_entity(f"X-Advisory: {advisory}\nX-Share: {OUTSIDER}\n\nFor the boss.\n")
    entity += crlf(
        f"\n--{boundary}\nContent-Type: application/pgp-keys\n\n".encode()
        + boss.public
        + f"\n--{boundary}--\n".encode()
    )
    with RelayThread(home.settings) as relay:
        _announce(home, keys, relay)
        post = _sign(home, distro0, entity, Cc="cfo@corp.example")
        code, reply = relay.run(_post(relay.port, post, sender=distro0.address))
    assert code == 550 and reply.startswith("5.7.1"), reply
    found = sorted((a, m, tuple(r)) for a, m, r, _ in _incidents(home))
    assert found == sorted(
        [
            (advisory, distro0.address, (OUTSIDER,)),
            (advisory, distro0.address, ("cfo@corp.example",)),
        ]
    )
