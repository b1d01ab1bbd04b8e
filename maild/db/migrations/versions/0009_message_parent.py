"""message.parent_message_id: the mail a message answers, indexed

A reply can be filed before the mail it answers (a bulk import in file-name order, a
relay that held the first mail longer); when that mail comes, it joins the reply's
ticket through this column. Filled for the messages already stored: In-Reply-To, else
the last of References.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_FILL = {
    "sqlite": (
        "UPDATE message SET parent_message_id = substr(coalesce("
        "json_extract(in_reply_to, '$[0]'), json_extract(\"references\", '$[#-1]')), 1, 998)"
    ),
    "postgresql": (
        "UPDATE message SET parent_message_id = left(coalesce("
        'in_reply_to::jsonb ->> 0, "references"::jsonb ->> -1), 998)'
    ),
}


def upgrade() -> None:
    with op.batch_alter_table("message") as batch:
        batch.add_column(sa.Column("parent_message_id", sa.String(998), nullable=True))
    op.create_index("ix_message_parent_message_id", "message", ["parent_message_id"])
    op.execute(_FILL[op.get_bind().dialect.name])


def downgrade() -> None:
    op.drop_index("ix_message_parent_message_id", table_name="message")
    with op.batch_alter_table("message") as batch:
        batch.drop_column("parent_message_id")
