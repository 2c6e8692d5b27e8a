"""incidents: leaks of embargoed advisories, to whom, by whom, and their reports

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 09:00:00

Hand-written for SQLite and PostgreSQL: one new table, nothing else changes.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "incidents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("advisory_id", sa.String(length=64), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=True),
        sa.Column("sender", sa.String(length=320), nullable=False),
        sa.Column("recipients", sa.JSON(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("message_id", sa.String(length=32), nullable=True),
        sa.Column("matched", sa.JSON(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("recorded_by", sa.String(length=200), nullable=False),
        sa.Column("report_message_id", sa.String(length=32), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_by", sa.String(length=200), nullable=True),
        sa.Column("resolution", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["advisory_id"], ["advisories.id"]),
        sa.ForeignKeyConstraint(["member_id"], ["members.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_incidents_at", "incidents", ["at"])
    op.create_index("ix_incidents_advisory_id", "incidents", ["advisory_id"])
    op.create_index("ix_incidents_member_id", "incidents", ["member_id"])


def downgrade() -> None:
    op.drop_index("ix_incidents_member_id", table_name="incidents")
    op.drop_index("ix_incidents_advisory_id", table_name="incidents")
    op.drop_index("ix_incidents_at", table_name="incidents")
    op.drop_table("incidents")
