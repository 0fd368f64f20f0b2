"""Account, key, credit and usage management (synchronous; the CLI calls it directly, the gate in threads)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, case, exc, exists, func, insert, or_, select, update

from gigarouter.accounts import keys, ledger
from gigarouter.accounts.db import transaction
from gigarouter.accounts.tables import Account, ApiKey, UsageRecord, utcnow
from gigarouter.errors import Conflict, InvalidRequest, NotFound

_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
GROUPS = ("key", "model", "day", "provider")
#: rpm and tpm are 32-bit INTEGER columns (Postgres refuses more; SQLite would store anything).
MAX_RATE = 2**31 - 1
#: How far a listing may skip (SQLite and Postgres take a 64-bit OFFSET; nobody has 2**62 accounts).
MAX_OFFSET = 2**62
#: Ids (``acct_…``, ``key_…``) are 40 characters at most; anything longer, or holding NUL (which
#: Postgres cannot even compare), names nothing.
MAX_ID_CHARS = 40


@dataclass(frozen=True)
class KeySpec:
    """What a new key may do; scopes None = keys.DEFAULT_SCOPES."""

    name: str | None = None
    scopes: frozenset[str] | None = None
    expires_at: datetime | None = None
    spend_cap_micro: int | None = None
    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True)
class KeyInfo:
    id: str
    account_id: str
    prefix: str
    name: str | None
    scopes: frozenset[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    spend_cap_micro: int | None
    spent_micro: int
    rpm: int | None
    tpm: int | None

    @property
    def display(self) -> str:
        return keys.display(self.prefix)


@dataclass(frozen=True)
class CreatedKey:
    info: KeyInfo
    key: str                         # the whole key: shown once, never stored


@dataclass(frozen=True)
class AccountInfo:
    id: str
    email: str | None
    balance_micro: int
    disabled: bool
    created_at: datetime


@dataclass(frozen=True)
class UsageRow:
    group: str | None
    requests: int
    failed: int                      # refunded: status >= 400, or 0 (no response)
    tokens: int                      # tokens of the charged requests
    cost_micro: int
    cached_tokens: int = 0           # of ``tokens``: answered from the embedding cache


class AccountStore:
    def __init__(self, engine: Engine, server_secret: bytes) -> None:
        self.engine = engine
        self._secret = server_secret

    # -- accounts ------------------------------------------------------------------------------
    def create_account(self, *, email: str | None = None, credit_micro: int = 0, note: str = "sign-up credit",
                       key: KeySpec | None = KeySpec()) -> tuple[AccountInfo, CreatedKey | None]:
        """A new account, its opening credit (one ledger grant) and, unless ``key`` is None, its first key."""
        email = check_email(email)
        if isinstance(credit_micro, bool) or not isinstance(credit_micro, int) or credit_micro < 0:
            raise ValueError("credit must be an integer >= 0")
        if credit_micro:
            ledger.check_amount(credit_micro, param="credit_micro")
        account_id = f"acct_{uuid.uuid4().hex}"
        try:
            with transaction(self.engine) as conn:
                conn.execute(insert(Account).values(id=account_id, email=email, balance_micro=0, disabled=False,
                                                    created_at=utcnow()))
                if credit_micro:
                    ledger.grant(conn, account_id=account_id, amount_micro=credit_micro, note=note)
                created = self._insert_key(conn, account_id, key) if key is not None else None
        except exc.IntegrityError:
            raise Conflict("an account with this email already exists", param="email",
                           code="account_exists") from None
        return self.get_account(account_id), created

    def get_account(self, account_id: str) -> AccountInfo:
        _check_id(account_id, "account")
        with transaction(self.engine, write=False) as conn:
            row = conn.execute(select(Account.__table__).where(Account.id == account_id)).one_or_none()
        if row is None:
            raise NotFound(f"account {account_id} does not exist")
        return _account_info(row)

    def list_accounts(self, *, limit: int = 100, offset: int = 0) -> list[AccountInfo]:
        if not 0 <= offset <= MAX_OFFSET:
            raise InvalidRequest(f"offset must be 0 to {MAX_OFFSET}", param="offset")
        if not 1 <= limit <= MAX_OFFSET:
            raise InvalidRequest("limit must be >= 1", param="limit")
        with transaction(self.engine, write=False) as conn:
            rows = conn.execute(select(Account.__table__).order_by(Account.created_at, Account.id)
                                .limit(limit).offset(offset)).all()
        return [_account_info(r) for r in rows]

    def grant(self, account_id: str, amount_micro: int, *, note: str | None = None) -> int:
        _check_id(account_id, "account")
        ledger.check_amount(amount_micro)
        if note is not None and (len(note) > 500 or "\x00" in note):
            raise InvalidRequest("note must be at most 500 characters, without NUL", param="note")
        with transaction(self.engine) as conn:
            return ledger.grant(conn, account_id=account_id, amount_micro=amount_micro, note=note)

    # -- keys ----------------------------------------------------------------------------------
    def create_key(self, account_id: str, spec: KeySpec = KeySpec()) -> CreatedKey:
        _check_id(account_id, "account")
        with transaction(self.engine) as conn:
            if conn.execute(select(Account.id).where(Account.id == account_id)).scalar_one_or_none() is None:
                raise NotFound(f"account {account_id} does not exist")
            return self._insert_key(conn, account_id, spec)

    def _insert_key(self, conn, account_id: str, spec: KeySpec) -> CreatedKey:
        try:
            scopes = keys.normalize_scopes(spec.scopes)
        except ValueError as e:
            raise InvalidRequest(str(e), param="scopes") from None
        _check_limits(spec)
        new = keys.generate(self._secret)
        key_id = f"key_{uuid.uuid4().hex}"
        conn.execute(insert(ApiKey).values(
            id=key_id, account_id=account_id, prefix=new.prefix, secret_hmac=new.digest, name=spec.name,
            scopes=keys.encode_scopes(scopes), created_at=utcnow(), expires_at=spec.expires_at,
            spend_cap_micro=spec.spend_cap_micro, spent_micro=0, rpm=spec.rpm, tpm=spec.tpm))
        row = conn.execute(select(ApiKey.__table__).where(ApiKey.id == key_id)).one()
        return CreatedKey(info=_key_info(row), key=new.key)

    def list_keys(self, account_id: str | None = None) -> list[KeyInfo]:
        statement = select(ApiKey.__table__).order_by(ApiKey.created_at, ApiKey.id)
        if account_id is not None:
            statement = statement.where(ApiKey.account_id == account_id)
        with transaction(self.engine, write=False) as conn:
            return [_key_info(r) for r in conn.execute(statement).all()]

    def revoke_key(self, key_id: str, *, account_id: str | None = None) -> KeyInfo:
        """Revoke now (idempotent). ``account_id`` restricts it to that account's keys."""
        _check_id(key_id, "API key")
        where = [ApiKey.id == key_id]
        if account_id is not None:
            where.append(ApiKey.account_id == account_id)
        with transaction(self.engine) as conn:
            conn.execute(update(ApiKey).where(*where, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow()))
            row = conn.execute(select(ApiKey.__table__).where(*where)).one_or_none()
        if row is None:
            raise NotFound(f"API key {key_id} does not exist")
        return _key_info(row)

    def has_keys(self) -> bool:
        """Whether any key could still authenticate (decides the auth mode)."""
        usable = select(ApiKey.id).where(ApiKey.revoked_at.is_(None),
                                         or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > utcnow()))
        with transaction(self.engine, write=False) as conn:
            return conn.execute(select(exists(usable))).scalar_one()

    # -- usage ---------------------------------------------------------------------------------
    def usage(self, account_id: str, *, group_by: str = "day", start: datetime | None = None,
              end: datetime | None = None) -> list[UsageRow]:
        if group_by not in GROUPS:
            raise InvalidRequest(f"group_by must be one of {', '.join(GROUPS)}", param="group_by")
        # provider: who served it; NULL (the last group) for refunds and requests from before routing.
        group = {"key": UsageRecord.key_id, "model": UsageRecord.model, "day": func.date(UsageRecord.created_at),
                 "provider": UsageRecord.provider}[group_by]
        charged = UsageRecord.status.between(200, 399)
        statement = (
            select(group.label("group"), func.count().label("requests"),
                   func.sum(case((charged, 0), else_=1)).label("failed"),
                   func.sum(case((charged, UsageRecord.tokens), else_=0)).label("tokens"),
                   func.sum(case((charged, UsageRecord.cached_tokens), else_=0)).label("cached"),
                   func.sum(UsageRecord.cost_micro).label("cost"))
            .where(UsageRecord.account_id == account_id, *_window(start, end))
            .group_by(group).order_by(group.asc().nulls_last())   # the same order on SQLite and Postgres
        )
        with transaction(self.engine, write=False) as conn:
            rows = conn.execute(statement).all()
        return [UsageRow(group=None if r.group is None else str(r.group), requests=int(r.requests),
                         failed=int(r.failed), tokens=int(r.tokens), cost_micro=int(r.cost),
                         cached_tokens=int(r.cached or 0)) for r in rows]


def _window(start: datetime | None, end: datetime | None) -> Iterable:
    if start is not None:
        yield UsageRecord.created_at >= start
    if end is not None:
        yield UsageRecord.created_at < end


def check_email(email: str | None) -> str | None:
    if email is None or not email.strip():
        return None
    email = email.strip().lower()
    if len(email) > 320 or not _EMAIL.match(email):   # no control characters (Postgres refuses NUL)
        raise InvalidRequest("not a valid email address", param="email")
    return email


def _check_id(value: str, what: str) -> None:
    if not isinstance(value, str) or len(value) > MAX_ID_CHARS or "\x00" in value:
        raise NotFound(f"this {what} does not exist")


def _check_limits(spec: KeySpec) -> None:
    for name, low, high in (("spend_cap_micro", 0, ledger.MAX_BALANCE_MICRO), ("rpm", 1, MAX_RATE),
                            ("tpm", 1, MAX_RATE)):
        value = getattr(spec, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high):
            raise InvalidRequest(f"{name} must be an integer from {low} to {high}", param=name)
    if spec.expires_at is not None:
        if spec.expires_at.tzinfo is None:
            raise InvalidRequest("expires_at must carry a time zone", param="expires_at")
        try:
            spec.expires_at.astimezone(UTC)
        except OverflowError:   # 0001-01-01T00:00+05:00 is before the first representable UTC instant
            raise InvalidRequest("expires_at is out of range", param="expires_at") from None
    if spec.name is not None and (len(spec.name) > 100 or _CONTROL.search(spec.name)):
        raise InvalidRequest("name must be at most 100 characters, without control characters", param="name")


def _account_info(row) -> AccountInfo:
    return AccountInfo(id=row.id, email=row.email, balance_micro=row.balance_micro, disabled=row.disabled,
                       created_at=row.created_at)


def _key_info(row) -> KeyInfo:
    return KeyInfo(id=row.id, account_id=row.account_id, prefix=row.prefix, name=row.name,
                   scopes=keys.decode_scopes(row.scopes), created_at=row.created_at, expires_at=row.expires_at,
                   revoked_at=row.revoked_at, last_used_at=row.last_used_at, spend_cap_micro=row.spend_cap_micro,
                   spent_micro=row.spent_micro, rpm=row.rpm, tpm=row.tpm)
