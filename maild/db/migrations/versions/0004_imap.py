"""imap: the rotated refresh tokens of mailboxes using the OAuth2 refresh-token flow

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "imap_oauth_token",
        sa.Column("mailbox", sa.String(length=200), nullable=False),
        sa.Column("refresh_token", sa.Text(), nullable=False),
        sa.Column("seed_sha256", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("mailbox", name=op.f("pk_imap_oauth_token")),
    )


def downgrade() -> None:
    op.drop_table("imap_oauth_token")
