"""Initial accounts schema: accounts, API keys, reservations, the ledger and usage records.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Snapshots of the types at this revision (migrations never import the live models).
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Money = sa.BigInteger
When = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("balance_micro", Money(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.CheckConstraint("balance_micro >= 0", name="ck_accounts_balance_not_negative"),
        sa.UniqueConstraint("email", name="uq_accounts_email"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id", name="fk_api_keys_account_id_accounts"),
                  nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("secret_hmac", sa.String(64), nullable=False),
        sa.Column("name", sa.String(100), nullable=True),
        sa.Column("scopes", sa.String(200), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.Column("expires_at", When, nullable=True),
        sa.Column("revoked_at", When, nullable=True),
        sa.Column("last_used_at", When, nullable=True),
        sa.Column("spend_cap_micro", Money(), nullable=True),
        sa.Column("spent_micro", Money(), nullable=False),
        sa.Column("rpm", sa.Integer(), nullable=True),
        sa.Column("tpm", sa.Integer(), nullable=True),
        sa.CheckConstraint("spent_micro >= 0", name="ck_api_keys_spent_not_negative"),
        sa.UniqueConstraint("prefix", name="uq_api_keys_prefix"),
    )
    op.create_index("ix_api_keys_account_id", "api_keys", ["account_id"])
    _create_reservations()
    _create_ledger()
    _create_usage()


def _create_reservations() -> None:
    op.create_table(
        "reservations",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("account_id", sa.String(40),
                  sa.ForeignKey("accounts.id", name="fk_reservations_account_id_accounts"), nullable=False),
        sa.Column("key_id", sa.String(40), sa.ForeignKey("api_keys.id", name="fk_reservations_key_id_api_keys"),
                  nullable=True),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("price_micro_per_million", Money(), nullable=False),
        sa.Column("cost_micro", Money(), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("owner", sa.Integer(), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.Column("closed_at", When, nullable=True),
        sa.CheckConstraint("state IN ('held', 'settled', 'refunded')", name="ck_reservations_state"),
        sa.CheckConstraint("cost_micro >= 0", name="ck_reservations_cost_not_negative"),
    )
    op.create_index("ix_reservations_account_id", "reservations", ["account_id"])
    op.create_index("ix_reservations_state_owner", "reservations", ["state", "owner"])


def _create_ledger() -> None:
    op.create_table(
        "ledger_entries",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(40),
                  sa.ForeignKey("accounts.id", name="fk_ledger_entries_account_id_accounts"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount_micro", Money(), nullable=False),
        sa.Column("reservation_id", sa.String(40),
                  sa.ForeignKey("reservations.id", name="fk_ledger_entries_reservation_id_reservations"),
                  nullable=True),
        sa.Column("note", sa.String(500), nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.CheckConstraint("kind IN ('grant', 'adjustment', 'reserve', 'settle', 'refund')",
                           name="ck_ledger_entries_kind"),
    )
    op.create_index("ix_ledger_entries_account_id", "ledger_entries", ["account_id"])
    op.create_index("ix_ledger_entries_reservation_id", "ledger_entries", ["reservation_id"])


def _create_usage() -> None:
    op.create_table(
        "usage_records",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("reservation_id", sa.String(40),
                  sa.ForeignKey("reservations.id", name="fk_usage_records_reservation_id_reservations"),
                  nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("account_id", sa.String(40),
                  sa.ForeignKey("accounts.id", name="fk_usage_records_account_id_accounts"), nullable=False),
        sa.Column("key_id", sa.String(40), sa.ForeignKey("api_keys.id", name="fk_usage_records_key_id_api_keys"),
                  nullable=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("cost_micro", Money(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.UniqueConstraint("reservation_id", name="uq_usage_records_reservation_id"),
    )
    op.create_index("ix_usage_records_account_id_created_at", "usage_records", ["account_id", "created_at"])


def downgrade() -> None:
    for table in ("usage_records", "ledger_entries", "reservations", "api_keys", "accounts"):
        op.drop_table(table)
