"""imap: folder checkpoints and mailbox leases

Revision ID: 0002_imap
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_imap"
# Chained after the routing migration that is in the tree too: two heads would stop
# `maild db upgrade` (and every test) with "multiple heads".
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "imap_checkpoint",
        sa.Column("mailbox", sa.String(length=200), nullable=False),
        sa.Column("folder", sa.String(length=500), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("last_uid", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("mailbox", "folder", name=op.f("pk_imap_checkpoint")),
    )
    op.create_table(
        "imap_lease",
        sa.Column("mailbox", sa.String(length=200), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("mailbox", name=op.f("pk_imap_lease")),
    )


def downgrade() -> None:
    op.drop_table("imap_lease")
    op.drop_table("imap_checkpoint")
