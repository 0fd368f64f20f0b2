"""Web users (email + argon2 password hash, one account each), their sessions and "we want it" votes.

Owned by the web package (``gigarouter/web/users.py`` declares the same tables).
Sessions store only the SHA-256 of the cookie's token.

Revision ID: w001
Revises: 0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "w001"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "web_users",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id", name="fk_web_users_account_id_accounts"),
                  nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("email", name="uq_web_users_email"),
        sa.UniqueConstraint("account_id", name="uq_web_users_account_id"),
    )
    op.create_table(
        "web_sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(40),
                  sa.ForeignKey("web_users.id", name="fk_web_sessions_user_id_web_users", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_web_sessions_user_id", "web_sessions", ["user_id"])
    op.create_table(
        "web_votes",
        sa.Column("user_id", sa.String(40),
                  sa.ForeignKey("web_users.id", name="fk_web_votes_user_id_web_users", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_web_votes_model", "web_votes", ["model"])


def downgrade() -> None:
    op.drop_index("ix_web_votes_model", table_name="web_votes")
    op.drop_table("web_votes")
    op.drop_index("ix_web_sessions_user_id", table_name="web_sessions")
    op.drop_table("web_sessions")
    op.drop_table("web_users")
