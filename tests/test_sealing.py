"""Encryption at rest: sealed columns hold no plaintext and open only with their own key."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, insert, select, text

from relay.core.sealing import (
    SealedBytes,
    SealedJSON,
    SealedText,
    Sealer,
    SealingError,
    attach,
    new_key,
)

MARKER = "EMBARGOED-MARKER-7f3a"


def _sealer() -> Sealer:
    sealer = Sealer()
    sealer.add(*new_key())
    return sealer


def test_a_sealed_value_opens_only_for_its_own_purpose_and_key() -> None:
    sealer = _sealer()
    sealed = sealer.seal(MARKER.encode(), "messages.body")
    assert MARKER.encode() not in sealed
    assert sealer.open(sealed, "messages.body") == MARKER.encode()
    with pytest.raises(SealingError, match="altered or moved"):
        sealer.open(sealed, "advisories.public_text")
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SealingError, match="altered or moved"):
        sealer.open(tampered, "messages.body")
    with pytest.raises(SealingError, match="does not hold"):
        _sealer().open(sealed, "messages.body")


def test_two_seals_of_the_same_text_differ() -> None:
    sealer = _sealer()
    assert sealer.seal(b"same", "p") != sealer.seal(b"same", "p")


def test_old_keys_still_open_after_a_new_one_is_current() -> None:
    sealer = _sealer()
    old = sealer.seal(b"before rotation", "p")
    sealer.add(*new_key(), current=True)
    new = sealer.seal(b"after rotation", "p")
    assert old[4:20] != new[4:20]
    assert sealer.open(old, "p") == b"before rotation"
    assert sealer.open(new, "p") == b"after rotation"


def test_no_key_loaded_refuses_to_store() -> None:
    with pytest.raises(SealingError, match="no data key"):
        Sealer().seal(b"x", "p")


def test_sealed_columns_keep_no_plaintext_in_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "sealed.db"
    engine = create_engine(f"sqlite:///{path}")
    meta = MetaData()
    table = Table(
        "t",
        meta,
        Column("id", Integer, primary_key=True),
        Column("blob", SealedBytes("t.blob")),
        Column("words", SealedText("t.words")),
        Column("doc", SealedJSON("t.doc")),
    )
    meta.create_all(engine)
    attach(engine, _sealer())
    with engine.begin() as conn:
        conn.execute(
            insert(table).values(
                id=1, blob=MARKER.encode(), words=f"a {MARKER}", doc={"excerpt": MARKER}
            )
        )
        # A row from before sealing: plaintext is read as it is.
        conn.execute(text("INSERT INTO t (id, words) VALUES (2, 'written before sealing')"))
    with engine.connect() as conn:
        rows = conn.execute(select(table).order_by(table.c.id)).all()
    assert rows[0].blob == MARKER.encode()
    assert rows[0].words == f"a {MARKER}"
    assert rows[0].doc == {"excerpt": MARKER}
    assert rows[1].words == "written before sealing"
    engine.dispose()
    assert MARKER.encode() not in path.read_bytes()


def test_each_engine_uses_its_own_key(tmp_path: Path) -> None:
    engines = [create_engine(f"sqlite:///{tmp_path / name}.db") for name in ("a", "b")]
    meta = MetaData()
    table = Table("t", meta, Column("id", Integer, primary_key=True), Column("w", SealedText("w")))
    for engine in engines:
        meta.create_all(engine)
        attach(engine, _sealer())
        with engine.begin() as conn:
            conn.execute(insert(table).values(id=1, w=str(engine.url)))
    for engine in engines:
        with engine.connect() as conn:
            assert conn.execute(select(table.c.w)).scalar_one() == str(engine.url)
        engine.dispose()


def test_an_engine_without_a_key_cannot_write_sealed_columns(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'nokey.db'}")
    meta = MetaData()
    table = Table("t", meta, Column("id", Integer, primary_key=True), Column("w", SealedText("w")))
    meta.create_all(engine)
    with pytest.raises(Exception, match="data key is not loaded"), engine.begin() as conn:
        conn.execute(insert(table).values(id=1, w=MARKER))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 0
    engine.dispose()
