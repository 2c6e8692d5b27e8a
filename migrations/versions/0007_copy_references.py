"""copy references: every delivery carries a per-recipient reference

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 17:00:00

Existing deliveries get a fresh reference each (their copies already sent carry none;
`relay trace` still finds those by their Message-ID). Batch mode, because SQLite cannot
add a NOT NULL unique column in place.
"""

import sqlalchemy as sa
from alembic import op

from relay.references import new_reference

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


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


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_constraint("uq_deliveries_reference", type_="unique")
        batch.drop_column("reference")
