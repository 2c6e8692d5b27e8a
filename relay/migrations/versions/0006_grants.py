"""grants: need-to-know shares of an advisory with a person in a member's team

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 09:00:00

Hand-written for SQLite and PostgreSQL: one new table, nothing else changes.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "grants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("advisory_id", sa.String(length=64), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("fingerprints", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("terms_message_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.String(length=200), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["advisory_id"], ["advisories.id"]),
        sa.ForeignKeyConstraint(["member_id"], ["members.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_grants_advisory_id", "grants", ["advisory_id"])
    op.create_index("ix_grants_member_id", "grants", ["member_id"])
    op.create_index("ix_grants_address", "grants", ["address"])
    op.create_index("ix_grants_state", "grants", ["state"])


def downgrade() -> None:
    op.drop_index("ix_grants_state", table_name="grants")
    op.drop_index("ix_grants_address", table_name="grants")
    op.drop_index("ix_grants_member_id", table_name="grants")
    op.drop_index("ix_grants_advisory_id", table_name="grants")
    op.drop_table("grants")
