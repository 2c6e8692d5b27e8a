"""members as organisations, contributing back, key and status reminders

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 09:00:00

Hand-written for SQLite and PostgreSQL. The new member columns are plain ADD COLUMNs
with server defaults, so existing rows get an empty list and an empty mapping.
"""

import sqlalchemy as sa
from alembic import op

from relay.core.database import sqlite_foreign_keys_off

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("members", sa.Column("domains", sa.JSON(), nullable=False, server_default="[]"))
    op.add_column("members", sa.Column("criteria", sa.JSON(), nullable=False, server_default="{}"))
    op.add_column("members", sa.Column("vouched_by", sa.String(length=320), nullable=True))

    op.create_table(
        "contributions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("advisory_id", sa.String(length=64), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(["advisory_id"], ["advisories.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["member_id"], ["members.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("advisory_id", "member_id"),
    )
    op.create_table(
        "status_reminders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("advisory_id", sa.String(length=64), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("message_id", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(["advisory_id"], ["advisories.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["member_id"], ["members.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("advisory_id", "member_id"),
    )
    op.create_table(
        "key_reminders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("message_id", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(["member_id"], ["members.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("fingerprint", "expires_at"),
    )


def downgrade() -> None:
    op.drop_table("key_reminders")
    op.drop_table("status_reminders")
    op.drop_table("contributions")
    if op.get_bind().dialect.name == "sqlite":
        # Dropping a column rebuilds `members`, which other tables reference: foreign
        # keys must be off, and the connection is detached so it is not reused with them off.
        sqlite_foreign_keys_off(op.get_bind())
        with op.batch_alter_table("members", recreate="always") as batch:
            for column in ("vouched_by", "criteria", "domains"):
                batch.drop_column(column)
    else:
        for column in ("vouched_by", "criteria", "domains"):
            op.drop_column("members", column)
