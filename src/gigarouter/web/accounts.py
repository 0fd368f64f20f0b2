"""The web's view of the accounts layer: sign-up, balance, keys and usage for one signed-in user.

The web never touches money itself. It calls the ``DatabaseGate`` (issue 5)
as the account's owner: a ``Principal`` for the user's account with the
default key scopes, so the same checks apply as for an API caller. With no
database-backed gate (open mode) the web runs catalog-only: no sign-up, no
votes, no dashboard.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool

from gigarouter.accounts import keys
from gigarouter.accounts.gate import Principal
from gigarouter.accounts.service import DatabaseGate
from gigarouter.accounts.store import AccountInfo, CreatedKey, KeyInfo, KeySpec
from gigarouter.errors import Conflict, Overloaded
from gigarouter.settings import Settings
from gigarouter.web import security
from gigarouter.web.users import EmailTaken, WebStore, WebUser, new_user_id

log = logging.getLogger(__name__)
T = TypeVar("T")
USAGE_DAYS = 30


@dataclass(frozen=True)
class Usage:
    # (day, requests, tokens, cost_micro, cached_tokens), every day of the window; cached_tokens is the
    # part of tokens answered from the embedding cache (billed at the model's cached price)
    days: list[tuple[date, int, int, int, int]]
    models: list[tuple[str, int, int, int, int]]   # (model, requests, tokens, cost_micro, cached), most tokens first

    @property
    def total_tokens(self) -> int:
        return sum(d[2] for d in self.days)

    @property
    def total_cached_tokens(self) -> int:
        return sum(d[4] for d in self.days)

    @property
    def total_cost(self) -> int:
        return sum(d[3] for d in self.days)


#: argon2id with argon2-cffi's defaults takes 64 MiB and tens of milliseconds of CPU per hash or
#: verification: at most this many run at once (sign-up, sign-in and rehash share them).
HASH_SLOTS = 2
#: Requests that may wait for a slot; past this, a sign-up or sign-in is refused at once (503).
HASH_QUEUE = 32


class AccountsPort:
    def __init__(self, gate: DatabaseGate) -> None:
        self.gate = gate
        self.store = WebStore(gate.engine)
        self._hash_slots = asyncio.Semaphore(HASH_SLOTS)
        self._hash_waiting = 0

    @staticmethod
    def owner(user: WebUser) -> Principal:
        return Principal(account_id=user.account_id, key_id=None, scopes=keys.DEFAULT_SCOPES)

    async def argon2(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a password hash or verification in a thread, at most ``HASH_SLOTS`` at a time."""
        if self._hash_waiting >= HASH_QUEUE:
            raise Overloaded("too many sign-ins and sign-ups at once; try again in a moment", retry_after=2.0)
        self._hash_waiting += 1
        try:
            async with self._hash_slots:
                return await run_in_threadpool(fn, *args)
        finally:
            self._hash_waiting -= 1

    async def sign_up(self, *, email: str, password: str, client: str | None) -> tuple[WebUser, CreatedKey]:
        """A new account with the free credit, its first key (returned once) and the web user that owns it.

        Cheapest first, so that a refused sign-up costs no hash: an email a web user
        has, then the gate's checks (sign-up on, a valid email, the per-address limit),
        and only then the argon2 hash, in one of ``HASH_SLOTS``.
        """
        if await run_in_threadpool(self.store.email_taken, email):
            raise EmailTaken(email)
        email = await self.gate.admit_sign_up(email=email, client=client)
        password_hash = await self.argon2(security.hash_password, password)
        account, key = await self._new_account(email, client)
        user_id = new_user_id()
        try:
            user = await run_in_threadpool(self._add_user, user_id, email, password_hash, account.id)
        except BaseException:
            # No web user owns the account: make its key useless rather than leave a live orphan.
            log.exception("sign-up of %s created account %s but not its web user", email, account.id)
            await self.gate.revoke_key(self.owner(WebUser(id="", email=email, account_id=account.id)), key.info.id)
            raise
        return user, key

    async def _new_account(self, email: str, client: str | None) -> tuple[AccountInfo, CreatedKey]:
        """The account for a web sign-up. The email belongs to whoever signs up here with a password: an
        account made through ``POST /v1/accounts`` (no password, no web user) that names it keeps its
        credit, keys and usage, and only gives the email up. Otherwise anyone could lock a person out of
        the web for good with one anonymous API call."""
        for attempt in range(2):
            released = await run_in_threadpool(self.store.release_email, email)
            if released:
                log.info("web sign-up of %s took the email from %s (an API account without a web user)",
                         email, released)
            try:
                return await self.gate.sign_up(email=email, client=client, admitted=True)
            except Conflict:    # an API sign-up took the email again meanwhile: release it once more
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _add_user(self, user_id: str, email: str, password_hash: str, account_id: str) -> WebUser:
        from gigarouter.accounts.db import transaction

        with transaction(self.store.engine) as conn:
            return self.store.add_user(conn, user_id=user_id, email=email, password_hash=password_hash,
                                       account_id=account_id)

    async def account(self, user: WebUser) -> AccountInfo:
        return await self.gate.get_account(user.account_id)

    async def keys(self, user: WebUser) -> list[KeyInfo]:
        return await self.gate.list_keys(self.owner(user))

    async def create_key(self, user: WebUser, name: str | None) -> CreatedKey:
        return await self.gate.create_key(self.owner(user), KeySpec(name=name or None))

    async def revoke_key(self, user: WebUser, key_id: str) -> KeyInfo:
        return await self.gate.revoke_key(self.owner(user), key_id)

    async def usage(self, user: WebUser, *, days: int = USAGE_DAYS, today: date | None = None) -> Usage:
        """Requests, tokens and cost per day (every day of the window, zeros included) and per model."""
        today = today or datetime.now(UTC).date()
        first = today - timedelta(days=days - 1)
        start = datetime(first.year, first.month, first.day, tzinfo=UTC)
        per_day, per_model = await asyncio.gather(
            self.gate.usage(self.owner(user), group_by="day", start=start),
            self.gate.usage(self.owner(user), group_by="model", start=start))
        by_day: dict[str, Any] = {row.group: row for row in per_day if row.group}
        day_rows = []
        for offset in range(days):
            d = first + timedelta(days=offset)
            row = by_day.get(d.isoformat())
            day_rows.append((d, row.requests, row.tokens, row.cost_micro, row.cached_tokens) if row
                            else (d, 0, 0, 0, 0))
        model_rows = sorted(((r.group or "?", r.requests, r.tokens, r.cost_micro, r.cached_tokens) for r in per_model),
                            key=lambda r: (-r[2], r[0]))
        return Usage(days=day_rows, models=model_rows)


def accounts_port(gate: Any, settings: Settings) -> AccountsPort | None:
    return AccountsPort(gate) if isinstance(gate, DatabaseGate) else None
