"""sla: SLA clock state on the ticket and the sla_stage ledger

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("ticket") as batch:
        batch.add_column(sa.Column("sla_applied", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("sla_priority", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("sla_paused_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("sla_response_cycle", sa.Integer(), server_default="0", nullable=False)
        )
        batch.add_column(
            sa.Column("sla_resolution_cycle", sa.Integer(), server_default="0", nullable=False)
        )
    op.create_table(
        "sla_stage",
        sa.Column("id", _ID, nullable=False),
        sa.Column("ticket_id", _ID, nullable=False),
        sa.Column("target", sa.String(length=32), nullable=False),
        sa.Column("cycle", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(length=64), nullable=False),
        sa.Column("occurrence", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["ticket_id"], ["ticket.id"], name=op.f("fk_sla_stage_ticket_id_ticket")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sla_stage")),
        sa.UniqueConstraint(
            "ticket_id",
            "target",
            "cycle",
            "stage",
            "occurrence",
            name=op.f("uq_sla_stage_ticket_id_target_cycle_stage_occurrence"),
        ),
    )


def downgrade() -> None:
    op.drop_table("sla_stage")
    with op.batch_alter_table("ticket") as batch:
        for column in (
            "sla_resolution_cycle",
            "sla_response_cycle",
            "sla_paused_at",
            "sla_priority",
            "sla_applied",
        ):
            batch.drop_column(column)
