"""hold reasons: a closed enumeration in deliveries.hold_reason

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 23:55:00

Why a delivery was held used to be read from `last_code` ("moderation", "embargo") or
from the start of its prose `last_reason` ("no usable key: ..."). Each held delivery now
carries a `HoldReason` in its own column; existing held rows are converted by the same
words, and a held row they do not describe becomes "unknown" (an administrator's
`relay queue retry` decides it).
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# (hold_reason, the condition that recognised it before)
_CONVERSIONS = (
    ("moderation", "last_code = 'moderation'"),
    ("embargo", "last_code = 'embargo'"),
    ("no-key", "last_reason LIKE 'no usable key%'"),
    ("encryption-failed", "last_reason LIKE 'encryption failed%'"),
    ("copy-not-built", "last_reason LIKE 'copy not built%'"),
    ("gate-failed", "last_reason LIKE 'the forwarding check failed%'"),
)


def upgrade() -> None:
    op.add_column("deliveries", sa.Column("hold_reason", sa.String(length=32), nullable=True))
    for reason, condition in _CONVERSIONS:
        op.execute(
            f"UPDATE deliveries SET hold_reason = '{reason}' "
            f"WHERE status = 'held' AND hold_reason IS NULL AND {condition}"
        )
    op.execute(
        "UPDATE deliveries SET hold_reason = 'unknown' "
        "WHERE status = 'held' AND hold_reason IS NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("hold_reason")
