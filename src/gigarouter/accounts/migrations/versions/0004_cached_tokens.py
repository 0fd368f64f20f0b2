"""The embedding cache: usage records keep how many of a request's tokens were answered from it.

Cached tokens are billed at the model's ``cached_price_per_million_usd`` (by
default nothing) and the rest at the serving provider's price; ``tokens`` stays
the total the model would have seen, ``cached_tokens`` is the part of it that
no provider computed. Rows from before the cache read 0.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("usage_records", sa.Column("cached_tokens", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("cached_tokens")
