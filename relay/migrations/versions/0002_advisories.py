"""advisories, reminders, and the advisory of every message and delivery

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 09:00:00

Hand-written for SQLite and PostgreSQL. On SQLite the new foreign-key columns
are added with a plain ADD COLUMN ... REFERENCES (allowed for a nullable column)
instead of a batch rebuild: rebuilding `messages` drops a table that
`deliveries` references, which fails while foreign keys are enforced.
"""

import sqlalchemy as sa
from alembic import op

from relay.core.database import sqlite_foreign_keys_off

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "advisories",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("lift_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lifted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("public_text", sa.Text(), nullable=True),
        sa.Column("public_release", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_advisories_state", "advisories", ["state"])
    op.create_index("ix_advisories_lift_at", "advisories", ["lift_at"])

    op.create_table(
        "advisory_reminders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("advisory_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("message_id", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(["advisory_id"], ["advisories.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("advisory_id", "kind", "due_at"),
    )

    sqlite = op.get_bind().dialect.name == "sqlite"
    for table in ("messages", "deliveries"):
        if sqlite:
            op.execute(
                f"ALTER TABLE {table} ADD COLUMN advisory_id VARCHAR(64) REFERENCES advisories (id)"
            )
        else:
            op.add_column(table, sa.Column("advisory_id", sa.String(length=64), nullable=True))
            op.create_foreign_key(
                f"fk_{table}_advisory_id", table, "advisories", ["advisory_id"], ["id"]
            )
        op.create_index(f"ix_{table}_advisory_id", table, ["advisory_id"])


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        # SQLite drops these columns only by rebuilding the tables, and rebuilding
        # `messages` drops a referenced table, so foreign keys must be off. The pragma
        # cannot be turned back on inside the transaction: the connection is detached
        # from the pool so that it is closed afterwards instead of being reused.
        sqlite_foreign_keys_off(op.get_bind())
    for table in ("deliveries", "messages"):
        op.drop_index(f"ix_{table}_advisory_id", table_name=table)
        if sqlite:
            with op.batch_alter_table(table, recreate="always") as batch:
                batch.drop_column("advisory_id")
        else:
            op.drop_constraint(f"fk_{table}_advisory_id", table, type_="foreignkey")
            op.drop_column(table, "advisory_id")
    op.drop_table("advisory_reminders")
    op.drop_index("ix_advisories_lift_at", table_name="advisories")
    op.drop_index("ix_advisories_state", table_name="advisories")
    op.drop_table("advisories")
