"""The accounts schema as SQLAlchemy 2 typed models (the migrations in ``migrations/`` create it).

Money is integer micro-dollars everywhere (``*_micro`` columns, BIGINT). The
``accounts.balance_micro`` column is the hot counter that reservations update
atomically; ``ledger_entries`` is the append-only history that explains it:
for every account, ``balance_micro == sum(ledger_entries.amount_micro)``.
See docs/accounts.md for the rules.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Autoincrementing 64-bit ids; SQLite only autoincrements a column declared INTEGER.
BigId = BigInteger().with_variant(Integer, "sqlite")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out; SQLite stores no zone, so one is attached on the way out."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Account(Base):
    __tablename__ = "accounts"
    __table_args__ = (CheckConstraint("balance_micro >= 0", name="balance_not_negative"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    email: Mapped[str | None] = mapped_column(String(320), unique=True)
    balance_micro: Mapped[int] = mapped_column(BigInteger, default=0)
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class ApiKey(Base):
    """A key is ``gr-<prefix>-<secret>``; only the prefix and HMAC-SHA256(server secret, key) are stored."""

    __tablename__ = "api_keys"
    __table_args__ = (CheckConstraint("spent_micro >= 0", name="spent_not_negative"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    secret_hmac: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(100))
    scopes: Mapped[str] = mapped_column(String(200))           # space-separated, sorted
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    spend_cap_micro: Mapped[int | None] = mapped_column(BigInteger)  # lifetime cap on what this key may spend
    spent_micro: Mapped[int] = mapped_column(BigInteger, default=0)
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)


class Reservation(Base):
    """Credit taken for one request before it runs; ``held`` until settled or refunded exactly once.

    ``cost_micro`` and ``tokens`` are what was reserved while held and the final
    figures once settled (settlement may only lower them; the reserved cost stays
    in the ``reserve`` ledger entry). ``price_micro_per_million`` is the price
    reserved at: for a routed request, the upper bound, not the serving price.

    ``owner`` is the id of the gateway process that holds it; start-up recovery
    refunds only reservations whose owner is provably dead (see recovery.py).
    """

    __tablename__ = "reservations"
    __table_args__ = (Index("ix_reservations_state_owner", "state", "owner"),
                      CheckConstraint("state IN ('held', 'settled', 'refunded')", name="state"),
                      CheckConstraint("cost_micro >= 0", name="cost_not_negative"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"))
    request_id: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(200))
    tokens: Mapped[int] = mapped_column(Integer)
    price_micro_per_million: Mapped[int] = mapped_column(BigInteger)
    cost_micro: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(10))             # held | settled | refunded
    owner: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class LedgerEntry(Base):
    """Append-only. Kinds: grant (+), adjustment (+/-), reserve (-reserved cost), settle (+(reserved - final
    cost): 0 when settled as reserved), refund (+reserved cost)."""

    __tablename__ = "ledger_entries"
    __table_args__ = (CheckConstraint("kind IN ('grant', 'adjustment', 'reserve', 'settle', 'refund')",
                                      name="kind"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    amount_micro: Mapped[int] = mapped_column(BigInteger)
    reservation_id: Mapped[str | None] = mapped_column(ForeignKey("reservations.id"), index=True)
    note: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class UsageRecord(Base):
    """One row per reservation once it is closed: what ran, what it cost (0 when refunded), how it ended.

    ``status`` is the HTTP status the client got; 0 means the process died
    before answering and start-up recovery refunded the request.
    """

    __tablename__ = "usage_records"
    __table_args__ = (Index("ix_usage_records_account_id_created_at", "account_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    reservation_id: Mapped[str] = mapped_column(ForeignKey("reservations.id"), unique=True)
    request_id: Mapped[str] = mapped_column(String(128))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"))
    model: Mapped[str] = mapped_column(String(200))
    tokens: Mapped[int] = mapped_column(Integer)
    cost_micro: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    # Revision 0002.
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    # Revision 0003: who served the request (None before routing, or when refunded before a provider
    # answered) and the token count a remote provider reported, kept beside our own ``tokens``.
    provider: Mapped[str | None] = mapped_column(String(100))
    upstream_tokens: Mapped[int | None] = mapped_column(Integer)
    # Revision 0004: how many of ``tokens`` were answered from the embedding cache (billed at the
    # model's cached price); 0 for requests from before the cache and for refunds.
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class IdempotencyRecord(Base):
    """One ``Idempotency-Key`` of one account: in flight (claimed by ``owner``) or done (response stored).

    Revision 0002. Failed requests delete their record, so a retry runs again.
    """

    __tablename__ = "idempotency_records"
    __table_args__ = (UniqueConstraint("account_id", "key"),
                      CheckConstraint("state IN ('in_flight', 'done')", name="state"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(10))             # in_flight | done
    owner: Mapped[int] = mapped_column(Integer)
    reservation_id: Mapped[str | None] = mapped_column(ForeignKey("reservations.id"), unique=True)
    status: Mapped[int | None] = mapped_column(Integer)
    response: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
