"""spool_raw: a spooled mail's bytes in a table of their own

SQLite rewrites a whole row when an UPDATE changes its size, as marking a mail
processed does; with the bytes in the spool row every mail was written twice.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "spool_raw",
        sa.Column("spool_id", _ID, nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["spool_id"], ["spool.id"]),
        sa.PrimaryKeyConstraint("spool_id"),
    )
    op.execute("INSERT INTO spool_raw (spool_id, raw) SELECT id, raw FROM spool")
    with op.batch_alter_table("spool") as batch:
        batch.drop_column("raw")


def downgrade() -> None:
    with op.batch_alter_table("spool") as batch:
        batch.add_column(sa.Column("raw", sa.LargeBinary(), nullable=True))
    op.execute("UPDATE spool SET raw = (SELECT raw FROM spool_raw WHERE spool_id = spool.id)")
    with op.batch_alter_table("spool") as batch:
        batch.alter_column("raw", existing_type=sa.LargeBinary(), nullable=False)
    op.drop_table("spool_raw")
