"""message_ref: the Message-IDs each received message names, indexed

A reply can be filed before the mail it answers (a bulk import in file-name order, a
relay that held the first mail longer); when that mail comes, it joins the reply's
ticket through this table, as do other replies of the same thread. Filled for the
messages already stored, from their In-Reply-To and References.

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

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

_FILL = {
    "sqlite": (
        "INSERT INTO message_ref (message_id, ref)"
        " SELECT m.id, substr(j.value, 1, 998) FROM message m, json_each(m.in_reply_to) j"
        " WHERE m.direction = 'in'"
        ' UNION SELECT m.id, substr(j.value, 1, 998) FROM message m, json_each(m."references") j'
        " WHERE m.direction = 'in'"
    ),
    "postgresql": (
        "INSERT INTO message_ref (message_id, ref)"
        " SELECT m.id, left(j, 998) FROM message m, json_array_elements_text(m.in_reply_to) j"
        " WHERE m.direction = 'in'"
        " UNION SELECT m.id, left(j, 998)"
        " FROM message m, json_array_elements_text(m.\"references\") j WHERE m.direction = 'in'"
    ),
}


def upgrade() -> None:
    op.create_table(
        "message_ref",
        sa.Column("ref", sa.String(998), nullable=False),
        sa.Column("message_id", _ID, nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["message.id"]),
        sa.PrimaryKeyConstraint("ref", "message_id"),
        sqlite_with_rowid=False,
    )
    op.execute(_FILL[op.get_bind().dialect.name])


def downgrade() -> None:
    op.drop_table("message_ref")
