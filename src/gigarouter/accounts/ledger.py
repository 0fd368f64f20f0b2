"""Money: exact per-request cost, atomic reservations, settlement, refunds and grants.

Units. Every amount is an integer number of micro-dollars (1 USD = 1_000_000).
A model's price is given in USD per 1M tokens, which is the same number as
micro-dollars per token; it is stored as integer micro-dollars per 1M tokens
(0.002 USD/M -> 2_000), rounded up if finer. The cost of a request is

    cost_micro = ceil(tokens * price_micro_per_million / 1_000_000)

rounded up once per request, so no request of a priced model is free and no
fraction of a micro-dollar is ever lost or invented.

A reservation may be taken at an upper bound (a router reserves before it
knows which provider serves the request, at the highest price it may pay and,
for remote-only models, an upper-bound token count) and settled lower, at the
serving provider's price and the final token count: ``settle`` gives the
difference back. The final cost never exceeds the reserved one.

Each function below runs inside the caller's transaction (``db.transaction``)
and writes the balance change, its ledger entry and (when a reservation
closes) its usage record together, so they can never disagree.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from sqlalchemy import Connection, false, insert, or_, select, update

from gigarouter.accounts import idempotency
from gigarouter.accounts.tables import Account, ApiKey, LedgerEntry, Reservation, UsageRecord, utcnow
from gigarouter.errors import Forbidden, InsufficientCredit, InvalidRequest, NotFound

MICRO = 1_000_000
#: The most one amount (a grant, an adjustment, an opening credit) may move: $1,000,000,000.
MAX_AMOUNT_MICRO = 10**15
#: The most a balance or a key's spend cap may hold: $1,000,000,000,000, far inside a 64-bit BIGINT
#: (9.2e18), so no sum of a balance and an amount can overflow. SQLite would not fail on overflow:
#: it silently turns the integer into a float, and the books would drift from the ledger.
MAX_BALANCE_MICRO = 10**18
MAX_PROVIDER_CHARS = 100             # usage_records.provider
MAX_UPSTREAM_TOKENS = 2**31 - 1      # usage_records.upstream_tokens is a 32-bit INTEGER on every database


def price_micro_per_million(price_per_million_usd: float | Decimal | str | None) -> int:
    """USD per 1M tokens -> integer micro-dollars per 1M tokens. None means the model is free."""
    if price_per_million_usd is None:
        return 0
    # str() first: Decimal(0.002) is 0.00200000000000000004..., Decimal("0.002") is exact.
    value = Decimal(str(price_per_million_usd))
    if not value.is_finite() or value < 0:
        raise ValueError(f"invalid price: {price_per_million_usd!r}")
    return int((value * MICRO).to_integral_value(rounding=ROUND_CEILING))


def cost_micro(tokens: int, price_micro_per_million: int, *, cached_tokens: int = 0,
               cached_price_micro_per_million: int = 0) -> int:
    """Exact integer cost, rounded up to the next micro-dollar once for the whole request.

    ``cached_tokens`` of the ``tokens`` were answered from the embedding cache and
    cost ``cached_price_micro_per_million`` each; the rest cost ``price_micro_per_million``.
    """
    if tokens < 0:
        raise ValueError("tokens must be >= 0")
    if not 0 <= cached_tokens <= tokens:
        raise ValueError("cached_tokens must be between 0 and tokens")
    return -(-((tokens - cached_tokens) * price_micro_per_million
               + cached_tokens * cached_price_micro_per_million) // MICRO)


def usd_to_micro(amount: str | Decimal | int) -> int:
    """A decimal USD amount ("1.25") -> micro-dollars, refusing anything finer than a micro-dollar."""
    try:
        value = Decimal(str(amount)) * MICRO
        if not value.is_finite():
            raise ValueError
        too_large = abs(value) > MAX_AMOUNT_MICRO
        whole = value == value.to_integral_value()
    except (ArithmeticError, ValueError):   # InvalidOperation, Overflow ("1e999999999"), NaN, Infinity
        raise ValueError(f"not an amount in USD: {str(amount)[:40]!r}") from None
    if too_large:   # checked before int(): int(Decimal("1e999999")) would build a million-digit number
        raise ValueError(f"an amount may be at most ${format_usd(MAX_AMOUNT_MICRO)}")
    if not whole:
        raise ValueError(f"{str(amount)[:40]!r} is not a whole number of micro-dollars")
    return int(value)


def check_amount(amount_micro: int, *, param: str = "amount_micro") -> int:
    """A non-zero integer amount within ``MAX_AMOUNT_MICRO`` either way, or ``InvalidRequest``."""
    if isinstance(amount_micro, bool) or not isinstance(amount_micro, int):
        raise InvalidRequest(f"{param} must be an integer number of micro-dollars", param=param)
    if amount_micro == 0:
        raise InvalidRequest("the amount must not be zero", param=param)
    if abs(amount_micro) > MAX_AMOUNT_MICRO:
        raise InvalidRequest(f"an amount may be at most {MAX_AMOUNT_MICRO} micro-dollars "
                             f"(${format_usd(MAX_AMOUNT_MICRO)}) either way", param=param)
    return amount_micro


def format_usd(micro: int) -> str:
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    return f"{sign}{whole}.{frac:06d}"


@dataclass(frozen=True)
class Held:
    """A reservation just taken."""

    reservation_id: str
    cost_micro: int
    balance_micro: int               # the account's balance right after


@dataclass(frozen=True)
class ReservationRequest:
    account_id: str
    key_id: str | None
    request_id: str
    model: str
    tokens: int
    price_micro_per_million: int
    owner: int                       # the gateway process taking it (see recovery.py)
    idempotency_claim: str | None = None


def reserve(conn: Connection, req: ReservationRequest) -> Held:
    """Take the exact cost from the balance, or raise; never read-then-write.

    The balance moves in one conditional UPDATE (``WHERE balance >= cost``);
    concurrent reservations either see enough credit and take it, or match no
    row. A key's spend cap is checked the same way in the same transaction.
    """
    cost = cost_micro(req.tokens, req.price_micro_per_million)
    balance = conn.execute(
        update(Account)
        .where(Account.id == req.account_id, Account.balance_micro >= cost, Account.disabled == false())
        .values(balance_micro=Account.balance_micro - cost)
        .returning(Account.balance_micro)
    ).scalar_one_or_none()
    if balance is None:
        raise _refusal(conn, req.account_id, cost)
    if req.key_id is not None:
        _charge_key(conn, req.key_id, cost)
    reservation_id = f"res_{uuid.uuid4().hex}"
    conn.execute(insert(Reservation).values(
        id=reservation_id, account_id=req.account_id, key_id=req.key_id, request_id=req.request_id,
        model=req.model, tokens=req.tokens, price_micro_per_million=req.price_micro_per_million,
        cost_micro=cost, state="held", owner=req.owner, created_at=utcnow()))
    _entry(conn, req.account_id, "reserve", -cost, reservation_id=reservation_id)
    if req.idempotency_claim is not None:
        idempotency.link(conn, claim_id=req.idempotency_claim, reservation_id=reservation_id)
    return Held(reservation_id=reservation_id, cost_micro=cost, balance_micro=balance)


def _charge_key(conn: Connection, key_id: str, cost: int) -> None:
    within_cap = or_(ApiKey.spend_cap_micro.is_(None), ApiKey.spent_micro + cost <= ApiKey.spend_cap_micro)
    updated = conn.execute(
        update(ApiKey).where(ApiKey.id == key_id, within_cap)
        .values(spent_micro=ApiKey.spent_micro + cost).returning(ApiKey.id)
    ).scalar_one_or_none()
    if updated is None:  # raising rolls the balance update back with the transaction
        raise InsufficientCredit("this API key has reached its spend cap", code="spend_cap_reached")


def _refusal(conn: Connection, account_id: str, cost: int) -> Exception:
    """Why a reservation matched no row (read after the fact, only to word the error)."""
    row = conn.execute(select(Account.balance_micro, Account.disabled).where(Account.id == account_id)).one_or_none()
    if row is None:
        return NotFound(f"account {account_id} does not exist")
    if row.disabled:
        return Forbidden("this account is disabled", code="account_disabled")
    return InsufficientCredit(f"insufficient credit: this request costs ${format_usd(cost)} "
                              f"and the balance is ${format_usd(row.balance_micro)}")


def settle(conn: Connection, *, reservation_id: str, status: int, latency_ms: float | None,
           response: bytes | None = None, cost_micro: int | None = None, tokens: int | None = None,
           provider: str | None = None, upstream_tokens: int | None = None, cached_tokens: int = 0) -> bool:
    """Turn a held reservation into a charge, with its usage record; False if it was already closed.

    The reservation was taken at an upper bound (the highest price a router may
    pay, and for remote models an upper-bound token count). ``cost_micro`` and
    ``tokens`` are the final figures (None: as reserved); the difference
    ``reserved - final`` goes back to the balance and comes off the key's
    ``spent_micro``, and the ``settle`` ledger entry carries it, so a
    reservation's entries always sum to minus what it finally cost. The
    reservation row is rewritten with the final cost and tokens. A final cost
    or token count above what was reserved is a caller bug: ``ValueError``,
    raised before anything is written (the reservation stays held).

    ``response`` is stored for the request's Idempotency-Key, if it had one,
    in this same transaction: a charged request always has its replayable result.
    ``cached_tokens`` (part of the final ``tokens``) were answered from the embedding
    cache; the usage record keeps them apart.
    """
    _check_final(cost_micro=cost_micro, tokens=tokens, provider=provider, upstream_tokens=upstream_tokens,
                 cached_tokens=cached_tokens)
    row = _close(conn, reservation_id, "settled")
    if row is None:
        return False
    final_cost = row.cost_micro if cost_micro is None else cost_micro
    final_tokens = row.tokens if tokens is None else tokens
    if final_cost > row.cost_micro or final_tokens > row.tokens or cached_tokens > final_tokens:
        # Raising rolls the close back with the transaction: the reservation is still held.
        raise ValueError(f"reservation {reservation_id} was reserved for {row.tokens} tokens costing "
                         f"{row.cost_micro} micro-dollars; it cannot settle at {final_tokens} tokens costing "
                         f"{final_cost} ({cached_tokens} of them cached)")
    back = row.cost_micro - final_cost
    if back:
        conn.execute(update(Account).where(Account.id == row.account_id)
                     .values(balance_micro=Account.balance_micro + back))
        if row.key_id is not None:
            conn.execute(update(ApiKey).where(ApiKey.id == row.key_id)
                         .values(spent_micro=ApiKey.spent_micro - back))
    if back or final_tokens != row.tokens:
        conn.execute(update(Reservation).where(Reservation.id == reservation_id)
                     .values(cost_micro=final_cost, tokens=final_tokens))
    _entry(conn, row.account_id, "settle", back, reservation_id=reservation_id)
    key = idempotency.complete(conn, reservation_id=reservation_id, status=status, response=response)
    _usage(conn, row, cost=final_cost, tokens=final_tokens, status=status, latency_ms=latency_ms,
           idempotency_key=key, provider=provider, upstream_tokens=upstream_tokens, cached_tokens=cached_tokens)
    return True


def _check_final(*, cost_micro: int | None, tokens: int | None, provider: str | None,
                 upstream_tokens: int | None, cached_tokens: int = 0) -> None:
    for name, value in (("cost_micro", cost_micro), ("tokens", tokens), ("upstream_tokens", upstream_tokens),
                        ("cached_tokens", cached_tokens)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{name} must be an integer >= 0, not {value!r}")
    if upstream_tokens is not None and upstream_tokens > MAX_UPSTREAM_TOKENS:
        # Refused here, alike on SQLite (which would store it) and Postgres (which would fail the commit).
        raise ValueError(f"upstream_tokens must be at most {MAX_UPSTREAM_TOKENS}, not {upstream_tokens}")
    if provider is not None and not 0 < len(provider) <= MAX_PROVIDER_CHARS:
        raise ValueError(f"provider must be 1 to {MAX_PROVIDER_CHARS} characters")


def refund(conn: Connection, *, reservation_id: str, status: int, latency_ms: float | None = None) -> bool:
    """Give a held reservation's credit back (usage record with cost 0); False if already closed."""
    row = _close(conn, reservation_id, "refunded")
    if row is None:
        return False
    conn.execute(update(Account).where(Account.id == row.account_id)
                 .values(balance_micro=Account.balance_micro + row.cost_micro))
    if row.key_id is not None:
        conn.execute(update(ApiKey).where(ApiKey.id == row.key_id)
                     .values(spent_micro=ApiKey.spent_micro - row.cost_micro))
    _entry(conn, row.account_id, "refund", row.cost_micro, reservation_id=reservation_id)
    key = idempotency.release_reservation(conn, reservation_id=reservation_id)
    _usage(conn, row, cost=0, tokens=row.tokens, status=status, latency_ms=latency_ms, idempotency_key=key)
    return True


def _close(conn: Connection, reservation_id: str, state: str):
    # The state check in the WHERE clause is what makes settle/refund happen at most once.
    return conn.execute(
        update(Reservation).where(Reservation.id == reservation_id, Reservation.state == "held")
        .values(state=state, closed_at=utcnow())
        .returning(Reservation.id, Reservation.account_id, Reservation.key_id, Reservation.request_id,
                   Reservation.model, Reservation.tokens, Reservation.cost_micro)
    ).one_or_none()


def _usage(conn: Connection, row, *, cost: int, tokens: int, status: int, latency_ms: float | None,
           idempotency_key: str | None, provider: str | None = None, upstream_tokens: int | None = None,
           cached_tokens: int = 0) -> None:
    conn.execute(insert(UsageRecord).values(
        reservation_id=row.id, request_id=row.request_id, account_id=row.account_id, key_id=row.key_id,
        model=row.model, tokens=tokens, cost_micro=cost, status=status, latency_ms=latency_ms,
        idempotency_key=idempotency_key, provider=provider, upstream_tokens=upstream_tokens,
        cached_tokens=cached_tokens, created_at=utcnow()))


def grant(conn: Connection, *, account_id: str, amount_micro: int, note: str | None = None) -> int:
    """Add credit (or, when negative, take it back without going below zero); the new balance.

    The amount is an int within ``MAX_AMOUNT_MICRO`` and the balance stays within
    ``MAX_BALANCE_MICRO`` (both checked in the one conditional UPDATE), else ``InvalidRequest``.
    """
    check_amount(amount_micro)
    statement = update(Account).where(Account.id == account_id)
    if amount_micro < 0:
        statement = statement.where(Account.balance_micro >= -amount_micro)
    else:
        statement = statement.where(Account.balance_micro <= MAX_BALANCE_MICRO - amount_micro)
    balance = conn.execute(statement.values(balance_micro=Account.balance_micro + amount_micro)
                           .returning(Account.balance_micro)).scalar_one_or_none()
    if balance is None:
        if amount_micro > 0 and conn.execute(select(Account.id).where(Account.id == account_id)).first():
            raise InvalidRequest(f"a balance may hold at most {MAX_BALANCE_MICRO} micro-dollars "
                                 f"(${format_usd(MAX_BALANCE_MICRO)})", param="amount_micro",
                                 code="balance_limit")
        raise _refusal(conn, account_id, -amount_micro)
    _entry(conn, account_id, "grant" if amount_micro > 0 else "adjustment", amount_micro, note=note)
    return balance


def _entry(conn: Connection, account_id: str, kind: str, amount: int, *, reservation_id: str | None = None,
           note: str | None = None) -> None:
    conn.execute(insert(LedgerEntry).values(account_id=account_id, kind=kind, amount_micro=amount,
                                            reservation_id=reservation_id, note=note, created_at=utcnow()))
