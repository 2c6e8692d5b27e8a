"""leak tracing: copy references, holds until another advisory's lift, incidents of refused posts

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 17:00:00

- deliveries.reference: every delivery carries a per-recipient reference. Existing
  deliveries get a fresh one each (their copies already sent carry none; `relay trace`
  still finds those by their Message-ID).
- deliveries.held_for: the advisory whose lift releases a copy held because its text
  quotes that advisory (NULL: the copy's own advisory).
- incidents.advisory_id loses its foreign key: a refused post may name an advisory that
  its refusal kept from being created, and its leak is reported all the same.

Batch mode, because SQLite cannot add a NOT NULL unique column or drop a foreign key in
place; the naming convention names the foreign key SQLite's reflection leaves unnamed.
"""

import sqlalchemy as sa
from alembic import op

from relay.core.references import new_reference

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_NAMES = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}
_INCIDENT_FK = "fk_incidents_advisory_id_advisories"


def _incident_fk() -> str:
    """The live name of incidents.advisory_id's foreign key: PostgreSQL's own, or (SQLite
    reflects it unnamed) the one the naming convention gives it."""
    for fk in sa.inspect(op.get_bind()).get_foreign_keys("incidents"):
        if fk["constrained_columns"] == ["advisory_id"]:
            return fk["name"] or _INCIDENT_FK
    raise RuntimeError("incidents.advisory_id has no foreign key to drop")


def upgrade() -> None:
    op.add_column("deliveries", sa.Column("reference", sa.String(length=20), nullable=True))
    deliveries = sa.table("deliveries", sa.column("id", sa.Integer), sa.column("reference"))
    connection = op.get_bind()
    ids = connection.execute(sa.select(deliveries.c.id)).scalars().all()
    for delivery_id in ids:
        connection.execute(
            deliveries.update()
            .where(deliveries.c.id == delivery_id)
            .values(reference=new_reference())
        )
    with op.batch_alter_table("deliveries") as batch:
        batch.alter_column("reference", existing_type=sa.String(length=20), nullable=False)
        batch.create_unique_constraint("uq_deliveries_reference", ["reference"])
        batch.add_column(sa.Column("held_for", sa.String(length=64), nullable=True))
    with op.batch_alter_table("incidents", naming_convention=_NAMES) as batch:
        batch.drop_constraint(_incident_fk(), type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("incidents", naming_convention=_NAMES) as batch:
        batch.create_foreign_key(_INCIDENT_FK, "advisories", ["advisory_id"], ["id"])
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("held_for")
        batch.drop_constraint("uq_deliveries_reference", type_="unique")
        batch.drop_column("reference")
