"""audit chain: each audit row carries the SHA-256 of its content and of the row before it

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-12 10:00:00

- audit_events.seq, prev_hash, row_hash: the row's place in the chain and its links
  (relay/store/audit_chain.py). The rows already there are chained here, oldest first.
- audit_chain_head: the newest link, one row, locked by each transaction that adds rows.

A sealed detail is hashed as it opens, so chaining the existing rows needs the database's
data keys: `relay init` opens them before it migrates.
"""

import hashlib

import sqlalchemy as sa
from alembic import op

from relay.core.sealing import SealedJSON, SealingError
from relay.model.base import UTCDateTime
from relay.store.audit_chain import GENESIS, HEAD_ID, canonical

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("seq", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("row_hash", sa.String(length=64), nullable=True))
        batch.create_unique_constraint("uq_audit_events_seq", ["seq"])
    head = op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("row_hash", sa.String(length=64), nullable=False),
    )
    seq, prev = _chain_existing()
    op.bulk_insert(head, [{"id": HEAD_ID, "seq": seq, "row_hash": prev}])


def _chain_existing() -> tuple[int, str]:
    connection = op.get_bind()
    sealed = SealedJSON("audit_events.detail")
    events = sa.table(
        "audit_events",
        sa.column("id", sa.Integer),
        sa.column("at", UTCDateTime),
        sa.column("actor", sa.String),
        sa.column("action", sa.String),
        sa.column("subject", sa.String),
        sa.column("detail"),
        sa.column("seq", sa.Integer),
        sa.column("prev_hash", sa.String),
        sa.column("row_hash", sa.String),
    )
    seq, prev = 0, GENESIS
    rows = connection.execute(sa.select(events).order_by(events.c.id)).all()
    for row in rows:
        try:
            detail = sealed.process_result_value(row.detail, connection.dialect)
        except SealingError as exc:
            raise SealingError(
                f"audit row {row.id} cannot be chained: {exc}; run 'relay init', which"
                " opens the data keys before it migrates"
            ) from None
        seq += 1
        data = canonical(seq, row.id, row.at, row.actor, row.action, row.subject, detail, prev)
        row_hash = hashlib.sha256(data).hexdigest()
        connection.execute(
            events.update()
            .where(events.c.id == row.id)
            .values(seq=seq, prev_hash=prev, row_hash=row_hash)
        )
        prev = row_hash
    return seq, prev


def downgrade() -> None:
    op.drop_table("audit_chain_head")
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_constraint("uq_audit_events_seq", type_="unique")
        batch.drop_column("row_hash")
        batch.drop_column("prev_hash")
        batch.drop_column("seq")
