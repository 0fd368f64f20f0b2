"""Onboarding runs (dated results: commit, device, versions, each step) and each model's catalog status.

Owned by the onboarding package (``gigarouter/onboarding/store.py`` declares the same tables).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "onboarding_runs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("step", sa.String(40), nullable=False),
        sa.Column("progress", sa.String(200), nullable=False),
        sa.Column("provider", sa.String(500), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("commit", sa.String(64), nullable=True),
        sa.Column("device", sa.String(300), nullable=True),
        sa.Column("versions", sa.Text(), nullable=False),
        sa.Column("results", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
    )
    op.create_index("ix_onboarding_runs_model", "onboarding_runs", ["model"])
    op.create_table(
        "model_status",
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("run_id", sa.String(40), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("model_status")
    op.drop_index("ix_onboarding_runs_model", table_name="onboarding_runs")
    op.drop_table("onboarding_runs")
