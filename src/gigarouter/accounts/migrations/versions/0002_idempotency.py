"""Idempotency keys: a stored first response per (account, Idempotency-Key), linked to its reservation.

Usage records gain the idempotency key the request carried, so a usage export
shows which charges came from retried requests.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idempotency_records",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("account_id", sa.String(40),
                  sa.ForeignKey("accounts.id", name="fk_idempotency_records_account_id_accounts"), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("owner", sa.Integer(), nullable=False),
        sa.Column("reservation_id", sa.String(40),
                  sa.ForeignKey("reservations.id", name="fk_idempotency_records_reservation_id_reservations"),
                  nullable=True),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("response", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("state IN ('in_flight', 'done')", name="ck_idempotency_records_state"),
        sa.UniqueConstraint("account_id", "key", name="uq_idempotency_records_account_id_key"),
        sa.UniqueConstraint("reservation_id", name="uq_idempotency_records_reservation_id"),
    )
    op.add_column("usage_records", sa.Column("idempotency_key", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("idempotency_key")
    op.drop_table("idempotency_records")
