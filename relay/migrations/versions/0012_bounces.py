"""bounces: a VERP token per delivery, hard bounces, members that keep bouncing

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-10 10:00:00

- deliveries.bounce_token: each copy's envelope sender is the list's VERP address with
  this token (relay/core/verp.py). Existing deliveries get a fresh one each (a copy
  already sent went out from the bare list address; its bounces are refused as before).
- bounces: one row per delivery a notification reported failed for good, with its member
  and status, so the same bounce counts once and a member's bounces can be counted.
- members.bouncing_since: set while an active member's copies keep bouncing.

Batch mode, because SQLite cannot add a NOT NULL unique column in place.
"""

import sqlalchemy as sa
from alembic import op

from relay.core.database import sqlite_foreign_keys_off
from relay.core.verp import new_token

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("deliveries", sa.Column("bounce_token", sa.String(length=32), nullable=True))
    deliveries = sa.table("deliveries", sa.column("id", sa.Integer), sa.column("bounce_token"))
    connection = op.get_bind()
    ids = connection.execute(sa.select(deliveries.c.id)).scalars().all()
    for delivery_id in ids:
        connection.execute(
            deliveries.update()
            .where(deliveries.c.id == delivery_id)
            .values(bounce_token=new_token())
        )
    with op.batch_alter_table("deliveries") as batch:
        batch.alter_column("bounce_token", existing_type=sa.String(length=32), nullable=False)
        batch.create_unique_constraint("uq_deliveries_bounce_token", ["bounce_token"])
    op.create_table(
        "bounces",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("delivery_id", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(["delivery_id"], ["deliveries.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["member_id"], ["members.id"], ondelete="CASCADE"),
        sa.UniqueConstraint("delivery_id"),
    )
    op.create_index("ix_bounces_member_id", "bounces", ["member_id"])
    with op.batch_alter_table("members") as batch:
        batch.add_column(sa.Column("bouncing_since", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_index("ix_bounces_member_id", "bounces")
    op.drop_table("bounces")
    if op.get_bind().dialect.name == "sqlite":
        # Dropping a column rebuilds `members` and `deliveries`, which other tables
        # reference: foreign keys must be off (as in 0003), and the connection is detached
        # so it is not reused with them off.
        sqlite_foreign_keys_off(op.get_bind())
    with op.batch_alter_table("members") as batch:
        batch.drop_column("bouncing_since")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_constraint("uq_deliveries_bounce_token", type_="unique")
        batch.drop_column("bounce_token")
