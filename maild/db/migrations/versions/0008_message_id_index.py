"""message: drop ix_message_message_id

The unique constraint on (message_id, body_hash) is an index that begins with
message_id, so it answers every lookup by Message-ID; the second index only cost a
B-tree insert (and a page written) per stored message.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_message_message_id", table_name="message")


def downgrade() -> None:
    op.create_index("ix_message_message_id", "message", ["message_id"])
