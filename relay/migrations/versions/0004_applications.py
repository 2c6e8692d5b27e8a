"""applications to join the list, with their answers and vouches

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 09:00:00

Hand-written for SQLite and PostgreSQL: one new table, nothing else changes.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "applications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("distribution", sa.String(length=200), nullable=False),
        sa.Column("alias", sa.String(length=320), nullable=True),
        sa.Column("answers", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("submitted_by", sa.String(length=200), nullable=False),
        sa.Column("vouches", sa.JSON(), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(length=200), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_applications_alias", "applications", ["alias"])


def downgrade() -> None:
    op.drop_index("ix_applications_alias", table_name="applications")
    op.drop_table("applications")
