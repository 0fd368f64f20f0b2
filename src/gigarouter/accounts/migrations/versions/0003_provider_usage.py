"""Routing: usage records say which provider served a request and what usage that provider reported.

A request's credit is reserved before the router picks a provider (at an
upper-bound price and token count) and settled at the serving provider's
price; ``provider`` names who served it and ``upstream_tokens`` keeps the
token count a remote provider reported beside our own ``tokens``.

Revision ID: 0003
Revises: w001 (the web tables revise 0002; this follows them so the chain keeps one head)
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "w001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("usage_records", sa.Column("provider", sa.String(100), nullable=True))
    op.add_column("usage_records", sa.Column("upstream_tokens", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("upstream_tokens")
        batch.drop_column("provider")
