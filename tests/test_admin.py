"""Use-cases of `relay.app.admin` and `relay.app.members` called directly, with the real
keyring and database."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from relay.app import admin, members, membership
from relay.core.config import Settings, load
from relay.core.database import Database
from relay.core.errors import KeyProblem, RelayError
from relay.core.gpg import GnuPG
from relay.model import AuditEvent, MemberKey
from tests.support.keys import KeyFactory

ROOT = Path(__file__).resolve().parent.parent
ACTOR = "cli:test"


@dataclass
class Env:
    settings: Settings
    db: Database
    crypto: GnuPG


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    shutil.copy(ROOT / "config.example.toml", tmp_path / "relay.toml")
    shutil.copytree(ROOT / "relay" / "policies", tmp_path / "policies")
    settings = load(tmp_path / "relay.toml")
    admin.init_relay(settings, ACTOR)
    db = admin.open_database(settings)
    crypto = admin.open_keyring(settings)
    admin.unseal(db, crypto)
    yield Env(settings, db, crypto)
    db.dispose()


def actions(env: Env) -> list[tuple[str, str]]:
    with env.db.transaction() as session:
        rows = session.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars()
        return [(r.action, r.subject) for r in rows]


def test_init_is_idempotent(env: Env) -> None:
    first = admin.list_keys(env.db, env.crypto)
    again = admin.init_relay(env.settings, ACTOR)
    assert again.key_created is False
    assert [k.fingerprint for k in first] == [again.fingerprint]
    assert actions(env) == [("list.initialised", env.settings.list.address)]


def test_one_file_with_several_keys_imports_them_all(env: Env, keys: KeyFactory) -> None:
    work, home = keys.make("carol-work"), keys.make("carol-home")
    view = members.add_member(
        env.db,
        env.crypto,
        env.settings,
        "carol@distro-c.example",
        "Distro C",
        work.public + home.public,
        ACTOR,
    )
    assert sorted(view.fingerprints) == sorted([work.fingerprint, home.fingerprint])
    assert view.usable and view.key_count == 2
    imported = [s for a, s in actions(env) if a == "key.imported"]
    assert sorted(imported) == sorted(view.fingerprints)


def test_one_bad_key_in_a_file_refuses_the_whole_file(env: Env, keys: KeyFactory) -> None:
    good, old = keys.make("dave"), keys.expired("dave-old")
    before = {k.fingerprint for k in env.crypto.list_keys()}
    with pytest.raises(KeyProblem, match="key has expired"):
        members.add_member(
            env.db,
            env.crypto,
            env.settings,
            "dave@distro-d.example",
            "D",
            good.public + old.public,
            ACTOR,
        )
    assert {k.fingerprint for k in env.crypto.list_keys()} == before
    assert members.list_members(env.db, env.crypto, include_removed=True) == []


def test_a_key_serves_one_member_only(env: Env, keys: KeyFactory) -> None:
    shared = keys.make("admin-shared")
    members.add_member(
        env.db, env.crypto, env.settings, "a@one.example", "One", shared.public, ACTOR
    )
    with pytest.raises(KeyProblem, match=r"already belongs to member a@one\.example"):
        members.add_member(
            env.db, env.crypto, env.settings, "b@two.example", "Two", shared.public, ACTOR
        )
    with pytest.raises(RelayError, match="already a member"):
        members.add_member(
            env.db, env.crypto, env.settings, "A@ONE.example", "One", shared.public, ACTOR
        )


def test_the_list_address_and_key_are_refused(env: Env) -> None:
    list_key = admin.list_keys(env.db, env.crypto)[0].fingerprint
    public = env.crypto.export_public(list_key)
    with pytest.raises(RelayError, match="list's own address"):
        admin.add_sender(env.db, env.crypto, env.settings, env.settings.list.address, public, ACTOR)
    with pytest.raises(KeyProblem, match="list's own key"):
        admin.add_sender(env.db, env.crypto, env.settings, "x@example.net", public, ACTOR)


def test_a_removed_member_can_come_back_with_a_new_key(env: Env, keys: KeyFactory) -> None:
    old, new = keys.make("erin-2024"), keys.make("erin-2026")
    args = (env.db, env.crypto, env.settings, "erin@distro-e.example")
    members.add_member(*args, "Distro E", old.public, ACTOR)
    removal = membership.change_state(env.db, "erin@distro-e.example", "remove", ACTOR, "left")
    assert (removal.old, removal.new, removal.cancelled) == ("active", "removed", 0)
    with pytest.raises(RelayError, match="already removed"):
        membership.change_state(env.db, "erin@distro-e.example", "remove", ACTOR)
    view = members.add_member(*args, "Distro E Linux", new.public, ACTOR)
    assert (view.state, view.name, view.fingerprints) == (
        "active",
        "Distro E Linux",
        [new.fingerprint],
    )
    with env.db.transaction() as session:
        assert session.execute(select(MemberKey.fingerprint)).scalars().all() == [new.fingerprint]
    assert [a for a, _ in actions(env)][1:] == [
        "member.added",
        "key.imported",
        "member.removed",
        "member.added",
        "key.imported",
    ]
    with env.db.transaction() as session:
        rows = session.execute(
            select(AuditEvent).where(AuditEvent.action == "member.added").order_by(AuditEvent.id)
        ).scalars()
        back = list(rows)[-1].detail
    assert back == {
        "old": "removed",
        "new": "active",
        "name": "Distro E Linux",
        "old_name": "Distro E",
        "fingerprints": [new.fingerprint],
    }


def test_member_key_revoked_later_shows_as_unusable(env: Env, keys: KeyFactory) -> None:
    frank = keys.make("admin-frank")
    members.add_member(
        env.db, env.crypto, env.settings, "frank@f.example", "F", frank.public, ACTOR
    )
    [view] = members.list_members(env.db, env.crypto)
    assert view.usable and view.problem is None

    env.crypto.import_keys(keys.revoked("admin-frank").public)  # the member publishes a revocation
    [view] = members.list_members(env.db, env.crypto)
    assert not view.usable and "key is revoked" in (view.problem or "")
    statuses = {k.fingerprint: k.status for k in admin.list_keys(env.db, env.crypto)}
    assert statuses[frank.fingerprint] == "revoked"


def test_sign_only_key_is_fine_for_a_sender_not_for_a_member(env: Env, keys: KeyFactory) -> None:
    signer = keys.make("signer", kind="sign-only")
    view = admin.add_sender(
        env.db, env.crypto, env.settings, "signer@src.example", signer.public, ACTOR
    )
    assert view.usable and view.fingerprints == [signer.fingerprint]
    with pytest.raises(KeyProblem, match="no usable encryption subkey"):
        members.add_member(
            env.db, env.crypto, env.settings, "m@x.example", "M", signer.public, ACTOR
        )
    statuses = {k.fingerprint: k.status for k in admin.list_keys(env.db, env.crypto)}
    assert statuses[signer.fingerprint] == "sign-only"


def test_key_list_marks_removed_members(env: Env, keys: KeyFactory) -> None:
    ivy = keys.make("ivy")
    members.add_member(env.db, env.crypto, env.settings, "ivy@i.example", "I", ivy.public, ACTOR)
    membership.change_state(env.db, "ivy@i.example", "remove", ACTOR)
    owners = {k.fingerprint: k.owners for k in admin.list_keys(env.db, env.crypto)}
    assert owners[ivy.fingerprint] == ["member ivy@i.example (removed)"]


def test_address_normalisation() -> None:
    assert admin.normalise_address("  Security@Example.ORG ") == "security@example.org"
    for bad in ["", "no-at-sign", "a@b", "two@@example.org", "sp ace@example.org"]:
        with pytest.raises(RelayError, match="not an email address"):
            admin.normalise_address(bad)
