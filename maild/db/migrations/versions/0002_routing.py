"""routing: ticket tags and assignment time

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ticket") as batch:
        batch.add_column(sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("tags", sa.JSON(), nullable=False, server_default="[]"))
        batch.create_index(batch.f("ix_ticket_assignee"), ["assignee"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("ticket") as batch:
        batch.drop_index(batch.f("ix_ticket_assignee"))
        batch.drop_column("tags")
        batch.drop_column("assigned_at")
