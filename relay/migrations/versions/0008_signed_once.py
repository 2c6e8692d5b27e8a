"""signed once: used signatures, pending earlier lifts, the poster by signing key

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 23:00:00

- used_signatures: every signature the relay accepted, unique by who signed what when,
  so a replayed post is refused for good (across restarts, and across nodes later).
- pending_changes: a signed post that brings a lift earlier waits for a second look.
- messages.poster: the registered owner of the signing key, filled in for existing posts
  from the sender and member keys (the envelope sender was used before; it is kept in
  mail_from as evidence only). messages.from_mismatch: a From address outside the
  signer's identity, accepted under `from_mismatch = "flag"`.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "used_signatures",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("signer_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("message_id", sa.String(length=32), nullable=False),
        sa.Column("replays", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_replay_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("digest"),
    )
    op.create_index(
        "ix_used_signatures_signer_fingerprint", "used_signatures", ["signer_fingerprint"]
    )
    op.create_table(
        "pending_changes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("advisory_id", sa.String(length=64), nullable=False),
        sa.Column("lift_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("old_lift_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("requested_by", sa.String(length=200), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("message_id", sa.String(length=32), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("decided_by", sa.String(length=200), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["advisory_id"], ["advisories.id"]),
    )
    op.create_index("ix_pending_changes_advisory_id", "pending_changes", ["advisory_id"])
    op.create_index("ix_pending_changes_state", "pending_changes", ["state"])
    op.add_column(
        "messages", sa.Column("poster", sa.String(length=320), server_default="", nullable=False)
    )
    op.add_column("messages", sa.Column("from_mismatch", sa.String(length=320), nullable=True))
    # Existing posts: the owner of the key that signed them, where it is still registered.
    for owners, keys, owner_id in (
        ("senders", "sender_keys", "sender_id"),
        ("members", "member_keys", "member_id"),
    ):
        op.execute(
            f"UPDATE messages SET poster = (SELECT o.address FROM {owners} o "
            f"JOIN {keys} k ON k.{owner_id} = o.id "
            "WHERE k.fingerprint = messages.signer_fingerprint LIMIT 1) "
            f"WHERE poster = '' AND EXISTS (SELECT 1 FROM {keys} k "
            "WHERE k.fingerprint = messages.signer_fingerprint)"
        )


def downgrade() -> None:
    # Plain DROP COLUMN (SQLite 3.35+): a batch copy of messages would drop the table that
    # deliveries' foreign key refers to.
    op.drop_column("messages", "from_mismatch")
    op.drop_column("messages", "poster")
    op.drop_index("ix_pending_changes_state", table_name="pending_changes")
    op.drop_index("ix_pending_changes_advisory_id", table_name="pending_changes")
    op.drop_table("pending_changes")
    op.drop_index("ix_used_signatures_signer_fingerprint", table_name="used_signatures")
    op.drop_table("used_signatures")
