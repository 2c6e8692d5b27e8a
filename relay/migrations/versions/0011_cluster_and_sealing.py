"""several nodes on one database, posts in the database, embargoed text sealed at rest

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-09 10:00:00

- `nodes` (each `relay serve` reports itself) and `leases` (the scheduler's, one holder at a
  time; its row is made here so taking it is always an UPDATE).
- `deliveries.lease_owner` names the node that claimed a copy; `deliveries.errors` counts
  unexpected errors while preparing or sending it (a copy that keeps failing ends `failed`).
- `data_keys` (wrapped to the list key), `message_bodies` (a post's bytes, sealed: no
  shared spool folder) and `public_keys` (members' and senders' keys, which every node's
  keyring follows).
- `incidents.matched` and `audit_events.detail` become text columns, as a sealed value is
  text (PostgreSQL had JSON). Sealing the values themselves needs the list key, which a
  migration does not have: `relay init` and the start of `relay serve` seal what is still
  plaintext and move the spool's files into `message_bodies` (relay/store/at_rest.py).
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# JSON columns whose values are now sealed (text).
_SEALED_JSON = (("incidents", "matched"), ("audit_events", "detail"))


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False, server_default=""),
        sa.Column("pid", sa.Integer, nullable=False, server_default="0"),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True)),
        sa.Column("last_claim_at", sa.DateTime(timezone=True)),
        sa.Column("last_delivery_at", sa.DateTime(timezone=True)),
        sa.Column("errors_last_hour", sa.Integer, nullable=False, server_default="0"),
        sa.Column("restarts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failing", sa.JSON, nullable=False, server_default="{}"),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("holder", sa.String(64)),
        sa.Column("acquired_at", sa.DateTime(timezone=True)),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.execute(
        "INSERT INTO leases (name, holder, expires_at) VALUES ('scheduler', NULL, '1970-01-01')"
    )
    # A downgrade keeps the data keys (what they sealed stays readable); here they return.
    if "data_keys" not in sa.inspect(op.get_bind()).get_table_names():
        op.create_table(
            "data_keys",
            sa.Column("id", sa.String(32), primary_key=True),
            sa.Column("wrapped", sa.LargeBinary, nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        )
    op.create_table(
        "message_bodies",
        sa.Column(
            "message_id",
            sa.String(32),
            sa.ForeignKey("messages.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("part", sa.String(16), primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "public_keys",
        sa.Column("fingerprint", sa.String(64), primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_public_keys_updated_at", "public_keys", ["updated_at"])
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(64)))
        batch.add_column(sa.Column("errors", sa.Integer, nullable=False, server_default="0"))
    for table, column in _SEALED_JSON:
        if op.get_bind().dialect.name == "postgresql":
            op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE TEXT USING {column}::text")
        else:
            with op.batch_alter_table(table) as batch:
                batch.alter_column(column, type_=sa.Text(), existing_type=sa.JSON())


def downgrade() -> None:
    stored = op.get_bind().execute(sa.text("SELECT count(*) FROM message_bodies")).scalar()
    if stored:
        # Before 0011 posts lived in spool files; the bodies here are sealed and a migration
        # cannot open them. Refuse rather than lose accepted posts.
        raise RuntimeError(
            f"{stored} stored post parts live in message_bodies; downgrading would lose them"
        )
    # Only plaintext converts back; a sealed value is kept as a JSON string.
    for table, column in _SEALED_JSON:
        if op.get_bind().dialect.name == "postgresql":
            op.execute(
                f"ALTER TABLE {table} ALTER COLUMN {column} TYPE JSON USING CASE WHEN "
                f"{column} LIKE 'sealed:%' THEN to_json({column}) ELSE {column}::json END"
            )
        else:
            with op.batch_alter_table(table) as batch:
                batch.alter_column(column, type_=sa.JSON(), existing_type=sa.Text())
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("errors")
        batch.drop_column("lease_owner")
    op.drop_index("ix_public_keys_updated_at", "public_keys")
    op.drop_table("public_keys")
    op.drop_table("message_bodies")
    # data_keys stays: values sealed under its keys (audit details, titles) remain readable.
    op.drop_table("leases")
    op.drop_table("nodes")
