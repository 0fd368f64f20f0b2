"""Onboarding runs record their runner: the liveness owner id of the process running them.

A run whose runner died is closed as abandoned (``gigarouter/onboarding/store.py``); before this
revision a run left ``running`` by a killed process stayed so forever, and its model stayed
``benchmarking``. Rows from before have no runner and count as abandoned.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("onboarding_runs", sa.Column("runner", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("onboarding_runs") as batch:     # SQLite drops a column by copying the table
        batch.drop_column("runner")
