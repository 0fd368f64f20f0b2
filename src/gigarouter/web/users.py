"""Web users (email + password), their sessions and their "we want it" votes.

Three tables beside the accounts schema, created by the migration
``w001_web_users``: a web user owns exactly one account (its credit, keys and
usage live in the accounts tables). Every method is one short transaction on
the accounts engine; the routes call them through ``run_in_threadpool``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    Column,
    Engine,
    ForeignKey,
    Index,
    MetaData,
    String,
    Table,
    and_,
    delete,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from gigarouter.accounts.db import transaction
from gigarouter.accounts.tables import NAMING, Account, UtcDateTime, utcnow
from gigarouter.web.security import SESSION_DAYS, token_hash

metadata = MetaData(naming_convention=NAMING)
accounts = Account.__table__

web_users = Table(
    "web_users", metadata,
    Column("id", String(40), primary_key=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("account_id", String(40), ForeignKey("accounts.id"), nullable=False, unique=True),
    Column("created_at", UtcDateTime, nullable=False),
)

web_sessions = Table(
    "web_sessions", metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", String(40), ForeignKey("web_users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
)

web_votes = Table(
    "web_votes", metadata,
    Column("user_id", String(40), ForeignKey("web_users.id", ondelete="CASCADE"), primary_key=True),
    Column("model", String(200), primary_key=True),
    Column("created_at", UtcDateTime, nullable=False),
    Index("ix_web_votes_model", "model"),
)


class EmailTaken(Exception):
    """A web user with this email exists already."""


@dataclass(frozen=True)
class WebUser:
    id: str
    email: str
    account_id: str
    password_hash: str = ""


def new_user_id() -> str:
    return f"wu_{secrets.token_hex(12)}"


class WebStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # Users ---------------------------------------------------------------------------------

    def add_user(self, conn, *, user_id: str, email: str, password_hash: str, account_id: str) -> WebUser:
        """Insert in the caller's transaction (sign-up creates the account in the same one)."""
        try:
            with conn.begin_nested():
                conn.execute(insert(web_users).values(id=user_id, email=email, password_hash=password_hash,
                                                      account_id=account_id, created_at=utcnow()))
        except IntegrityError:
            raise EmailTaken(email) from None
        return WebUser(id=user_id, email=email, account_id=account_id)

    def release_email(self, email: str) -> list[str]:
        """Clear ``email`` from accounts that no web user owns (made by ``POST /v1/accounts``); their ids."""
        unowned = and_(accounts.c.email == email,
                       ~exists().where(web_users.c.account_id == accounts.c.id))
        with transaction(self.engine) as conn:
            ids = list(conn.execute(select(accounts.c.id).where(unowned)).scalars())
            if ids:
                conn.execute(update(accounts).where(accounts.c.id.in_(ids)).values(email=None))
        return ids

    def email_taken(self, email: str) -> bool:
        with transaction(self.engine, write=False) as conn:
            return conn.execute(select(web_users.c.id).where(web_users.c.email == email)).first() is not None

    def user_by_email(self, email: str) -> WebUser | None:
        with transaction(self.engine, write=False) as conn:
            row = conn.execute(select(web_users).where(web_users.c.email == email)).first()
        return _user(row) if row else None

    def set_password_hash(self, user_id: str, password_hash: str) -> None:
        with transaction(self.engine) as conn:
            conn.execute(update(web_users).where(web_users.c.id == user_id).values(password_hash=password_hash))

    # Sessions ------------------------------------------------------------------------------

    def start_session(self, user_id: str, token: str, *, now: datetime | None = None) -> None:
        now = now or utcnow()
        with transaction(self.engine) as conn:
            conn.execute(delete(web_sessions).where(web_sessions.c.user_id == user_id,
                                                    web_sessions.c.expires_at < now))
            conn.execute(insert(web_sessions).values(token_hash=token_hash(token), user_id=user_id, created_at=now,
                                                     expires_at=now + timedelta(days=SESSION_DAYS)))

    def session_user(self, token: str, *, now: datetime | None = None) -> WebUser | None:
        """The signed-in user for a session cookie (one indexed join), or None if unknown or expired."""
        query = (select(web_users.c.id, web_users.c.email, web_users.c.account_id)
                 .join(web_sessions, web_sessions.c.user_id == web_users.c.id)
                 .where(web_sessions.c.token_hash == token_hash(token), web_sessions.c.expires_at > (now or utcnow())))
        with transaction(self.engine, write=False) as conn:
            row = conn.execute(query).first()
        return WebUser(id=row.id, email=row.email, account_id=row.account_id) if row else None

    def end_session(self, token: str) -> None:
        with transaction(self.engine) as conn:
            conn.execute(delete(web_sessions).where(web_sessions.c.token_hash == token_hash(token)))

    # Votes ---------------------------------------------------------------------------------

    def vote(self, user_id: str, model: str) -> bool:
        """Record the user's vote for ``model``; False if they had voted for it already."""
        try:
            with transaction(self.engine) as conn:
                conn.execute(insert(web_votes).values(user_id=user_id, model=model, created_at=utcnow()))
        except IntegrityError:
            return False
        return True

    def unvote(self, user_id: str, model: str) -> bool:
        with transaction(self.engine) as conn:
            result = conn.execute(delete(web_votes).where(web_votes.c.user_id == user_id, web_votes.c.model == model))
        return result.rowcount > 0

    def vote_counts(self) -> dict[str, int]:
        """Votes per model, in one grouped query."""
        query = select(web_votes.c.model, func.count()).group_by(web_votes.c.model)
        with transaction(self.engine, write=False) as conn:
            return {model: count for model, count in conn.execute(query)}

    def votes_of(self, user_id: str) -> set[str]:
        with transaction(self.engine, write=False) as conn:
            return set(conn.execute(select(web_votes.c.model).where(web_votes.c.user_id == user_id)).scalars())


def _user(row) -> WebUser:
    return WebUser(id=row.id, email=row.email, account_id=row.account_id, password_hash=row.password_hash)
