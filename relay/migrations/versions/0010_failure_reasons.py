"""failure reasons: a closed enumeration in deliveries.failure_reason

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08 10:00:00

Why a delivery failed used to be read from `last_code` ("cancelled", "rejected", an SMTP
code) or from the start of its prose `last_reason` ("queue lifetime exceeded; ..."). Each
failed delivery now carries a `FailureReason` in its own column; existing failed rows are
converted by the same words, and a failed row they do not describe becomes "unknown".
`last_code` and `last_reason` are left as they were, so the downgrade loses nothing.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# (failure_reason, the condition that recognised it before), first match wins: an expired
# copy's `last_code` is the last temporary error's.
_CONVERSIONS = (
    ("expired", "last_reason LIKE 'queue lifetime exceeded%'"),
    ("moderator-rejected", "last_code = 'rejected'"),
    # Cancelled copies: a member's when it was removed or suspended, else a grant holder's.
    ("removed", "last_code = 'cancelled' AND member_id IS NOT NULL"),
    ("grant-revoked", "last_code = 'cancelled' AND member_id IS NULL"),
    ("unusable-address", "last_code = 'addr'"),
    ("rejected", "last_code LIKE '5__'"),
)


def upgrade() -> None:
    op.add_column("deliveries", sa.Column("failure_reason", sa.String(length=32), nullable=True))
    for reason, condition in _CONVERSIONS:
        op.execute(
            f"UPDATE deliveries SET failure_reason = '{reason}' "
            f"WHERE status = 'failed' AND failure_reason IS NULL AND {condition}"
        )
    op.execute(
        "UPDATE deliveries SET failure_reason = 'unknown' "
        "WHERE status = 'failed' AND failure_reason IS NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("failure_reason")
