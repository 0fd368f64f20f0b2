"""``DatabaseGate``: the ``Gate`` backed by the accounts database, plus the management calls routes use.

    gate = DatabaseGate.from_settings(settings)
    await gate.start()        # migrations (SQLite), liveness lock, crash recovery, periodic sweeps
    ...
    await gate.close()

or, for a server, ``gate = await build_gate(settings)``: the DatabaseGate or,
where the auth mode says open, an OpenGate.

Database work runs on a small thread pool of its own, sized like the
connection pool, so the event loop never blocks on SQLite or Postgres and no
thread ever waits for a connection.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Engine

from gigarouter.accounts import auth, idempotency, keys, ledger, migrations, recovery
from gigarouter.accounts.db import is_sqlite, make_engine, transaction
from gigarouter.accounts.gate import Charge, Gate, IdempotencySlot, OpenGate, Principal
from gigarouter.accounts.limits import InProcessLimiter, Limit, Limiter, RedisLimiter
from gigarouter.accounts.store import AccountInfo, AccountStore, CreatedKey, KeyInfo, KeySpec, UsageRow, check_email
from gigarouter.errors import Conflict, Forbidden, InvalidRequest, NotReady
from gigarouter.settings import DEFAULT_RPM, DEFAULT_TPM, Settings

log = logging.getLogger(__name__)

#: An operator-created account's first key: default name and scopes (KeySpec is frozen, so one instance is safe).
_DEFAULT_KEY = KeySpec()

T = TypeVar("T")


@dataclass(frozen=True)
class GateOptions:
    """Tunables with sensible defaults (not yet in Settings)."""

    db_threads: int = 8
    default_limit: Limit | None = None                     # keys without their own rpm/tpm; None: the settings'
    signup_limit: Limit = Limit(requests=10, period_s=3600.0)   # sign-ups per client address
    signin_limit: Limit = Limit(requests=10, period_s=300.0)    # web sign-in attempts per address and per email
    recovery_interval_s: float = 60.0
    stale_reservation_s: float = 3600.0                    # our own held reservations older than this: refund
    idempotency_wait_s: float = 60.0                       # how long a duplicate waits for the first


class DatabaseGate:
    def __init__(self, engine: Engine, *, server_secret: bytes, limiter: Limiter | None = None,
                 signup_credit_micro: int = 0, signup_enabled: bool = True, migrate: bool = False,
                 options: GateOptions = GateOptions()) -> None:
        self.engine = engine
        self.store = AccountStore(engine, server_secret)
        self.limiter = limiter or InProcessLimiter()
        self.signup_credit_micro = signup_credit_micro
        self.signup_enabled = signup_enabled
        if options.default_limit is None:
            options = dataclasses.replace(options, default_limit=Limit(requests=DEFAULT_RPM, tokens=DEFAULT_TPM))
        self.options = options
        self._secret = server_secret
        self._migrate = migrate
        self._pool = ThreadPoolExecutor(max_workers=options.db_threads, thread_name_prefix="accounts-db")
        self._lock: recovery.InstanceLock | None = None
        self._sweeper: asyncio.Task | None = None
        self._extra_sweeps: list[Callable[[], object]] = []           # other packages' dead-process cleanup
        self._waiters: dict[tuple[str, str], asyncio.Event] = {}     # (account, key) -> woken when released
        self._slots: dict[str, IdempotencySlot] = {}                  # reservation id -> its open claim
        self.startup_recovery: recovery.RecoveryReport | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, limiter: Limiter | None = None, migrate: bool | None = None,
                      options: GateOptions = GateOptions()) -> DatabaseGate:
        """``migrate`` None: upgrade a SQLite database at start; Postgres must be upgraded explicitly."""
        url = settings.resolved_database_url
        if settings.server_secret is None and not is_sqlite(url):
            log.warning("server_secret is not set: API keys only verify on hosts that share %s",
                        settings.data_dir / keys.SECRET_FILE)
        if limiter is None:
            limiter = RedisLimiter.from_url(settings.redis_url) if settings.redis_url else InProcessLimiter()
        if options.default_limit is None:   # 0 in the settings = unlimited
            options = dataclasses.replace(options, default_limit=Limit(requests=settings.default_rpm or None,
                                                                       tokens=settings.default_tpm or None))
        engine = make_engine(url, pool_size=options.db_threads)
        return cls(engine, server_secret=keys.server_secret(settings), limiter=limiter,
                   signup_credit_micro=settings.signup_credit_micro, signup_enabled=settings.signup_enabled,
                   migrate=is_sqlite(url) if migrate is None else migrate, options=options)

    # -- life cycle ----------------------------------------------------------------------------
    async def start(self) -> recovery.RecoveryReport:
        """Ready the schema, take this process's liveness lock, and recover what dead gateways left."""
        await self._run(self._check_schema)
        self._lock = await self._run(recovery.instance_lock, self.engine)
        self._waiters.clear()
        report = self.startup_recovery = await self.recover()
        self._sweeper = asyncio.create_task(self._sweep(), name="accounts-recovery")
        return report

    def _check_schema(self) -> None:
        migrations.ensure_current(self.engine.url.render_as_string(hide_password=False), migrate=self._migrate)

    async def recover(self) -> recovery.RecoveryReport:
        return await self._run(self._recover_now)

    def _recover_now(self) -> recovery.RecoveryReport:
        report = recovery.recover(self.engine, self._ready_lock())
        stale = recovery.refund_stale(self.engine, owner=self._ready_lock().owner,
                                      older_than_s=self.options.stale_reservation_s)
        for sweep in self._extra_sweeps:
            try:
                sweep()
            except Exception:     # one package's failed cleanup must not stop the accounts' recovery
                log.exception("recovery sweep %r failed", sweep)
        return dataclasses.replace(report, refunded=report.refunded + stale)

    async def add_sweep(self, sweep: Callable[[], object]) -> None:
        """Run ``sweep`` (blocking DB work that closes what dead processes left: onboarding runs) now,
        then at every recovery sweep. It may use ``liveness`` to tell dead processes from live ones."""
        self._extra_sweeps.append(sweep)
        await self._run(sweep)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.options.recovery_interval_s)
            try:
                await self.recover()
            except Exception:  # a failed sweep is retried next interval; it must not kill the loop
                log.exception("accounts recovery sweep failed")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        await self.limiter.close()
        if self._lock is not None:
            await self._run(self._lock.close)
            self._lock = None
        # Work already running finishes (it may be a charge); off the loop, which must not block.
        await asyncio.get_running_loop().run_in_executor(None, functools.partial(self._pool.shutdown, wait=True))
        self.engine.dispose()

    @property
    def liveness(self) -> recovery.InstanceLock:
        """This process's liveness lock: the batch runner marks the batches it runs with its owner, so a
        batch is taken over only when this gateway is dead, and its charges in flight then recovered."""
        return self._ready_lock()

    def _ready_lock(self) -> recovery.InstanceLock:
        if self._lock is None:
            raise NotReady("accounts are not started")
        return self._lock

    async def _run(self, fn: Callable[..., T], *args: Any, on_orphan: Callable[[T], None] | None = None,
                   **kwargs: Any) -> T:
        """Run blocking DB work on the pool. If the caller is cancelled the work still finishes; a result
        nobody will receive (a reservation, a claim) is handed to ``on_orphan`` so it is undone."""
        future = asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if on_orphan is not None:
                future.add_done_callback(functools.partial(self._undo, on_orphan))
            raise

    def _undo(self, on_orphan: Callable[[Any], None], future: asyncio.Future) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        try:
            self._pool.submit(on_orphan, future.result())
        except RuntimeError:  # the pool is shut down (closing): undo it here and now
            try:
                on_orphan(future.result())
            except Exception:
                log.exception("could not undo the work of a cancelled request; recovery will at next start")

    # -- the Gate protocol ---------------------------------------------------------------------
    async def authenticate(self, authorization: str | None, *, scope: str) -> Principal:
        return await self._run(auth.authenticate, self.engine, self._secret, authorization, scope=scope)

    async def check_rate(self, principal: Principal, *, tokens: int) -> dict[str, str]:
        if principal.key_id is None:
            return {}
        default = self.options.default_limit
        limit = Limit(requests=principal.rpm or default.requests, tokens=principal.tpm or default.tokens,
                      period_s=default.period_s)
        # tokens == 0 is the admission check (one request); later calls count the request's tokens.
        return await self.limiter.hit(principal.key_id, limit, requests=0 if tokens else 1, tokens=tokens)

    async def reserve(self, principal: Principal, *, model: str, tokens: int, price_per_million_usd: float | None,
                      request_id: str, idempotency: IdempotencySlot | None = None) -> Charge:
        if principal.account_id is None:
            raise Forbidden("an account is needed to run paid requests")
        claim = idempotency.claim_id if idempotency is not None else None
        request = ledger.ReservationRequest(
            account_id=principal.account_id, key_id=principal.key_id, request_id=request_id, model=model,
            tokens=tokens, price_micro_per_million=ledger.price_micro_per_million(price_per_million_usd),
            owner=self._ready_lock().owner, idempotency_claim=claim)
        held = await self._run(self._reserve_now, request, on_orphan=self._refund_orphan)
        if claim is not None:
            idempotency.reservation_id = held.reservation_id
            self._slots[held.reservation_id] = idempotency
        return Charge(principal=principal, request_id=request_id, model=model, tokens=tokens,
                      cost_micro=held.cost_micro, reservation_id=held.reservation_id)

    def _reserve_now(self, request: ledger.ReservationRequest) -> ledger.Held:
        with transaction(self.engine) as conn:
            return ledger.reserve(conn, request)

    def _refund_orphan(self, held: ledger.Held) -> None:
        with transaction(self.engine) as conn:
            ledger.refund(conn, reservation_id=held.reservation_id, status=499)

    async def settle(self, charge: Charge, *, status: int, latency_ms: float, response: bytes | None = None,
                     cost_micro: int | None = None, tokens: int | None = None, provider: str | None = None,
                     upstream_tokens: int | None = None, cached_tokens: int = 0) -> None:
        if charge.reservation_id is None:
            return
        settled = await self._run(self._close_now, ledger.settle, reservation_id=charge.reservation_id,
                                  status=status, latency_ms=latency_ms, response=response, cost_micro=cost_micro,
                                  tokens=tokens, provider=provider, upstream_tokens=upstream_tokens,
                                  cached_tokens=cached_tokens)
        self._closed(charge)
        if not settled:
            log.warning("reservation %s was already closed (refunded by recovery?); request %s not charged",
                        charge.reservation_id, charge.request_id)

    async def refund(self, charge: Charge, *, status: int) -> None:
        if charge.reservation_id is not None:
            await self._run(self._close_now, ledger.refund, reservation_id=charge.reservation_id, status=status)
            self._closed(charge)

    def _closed(self, charge: Charge) -> None:
        slot = self._slots.pop(charge.reservation_id, None)
        if slot is not None:
            slot.closed = True  # the settle/refund transaction took care of the claim

    def _close_now(self, close: Callable[..., bool], **kwargs: Any) -> bool:
        with transaction(self.engine) as conn:
            return close(conn, **kwargs)

    # -- idempotency ---------------------------------------------------------------------------
    @asynccontextmanager
    async def idempotency(self, principal: Principal, key: str | None,
                          fingerprint: str) -> AsyncIterator[IdempotencySlot]:
        if key is None or principal.account_id is None:
            yield IdempotencySlot()
            return
        key = idempotency.check_key(key)
        slot = await self._claim(principal.account_id, key, fingerprint)
        try:
            yield slot
        finally:
            if slot.claim_id is not None:
                if not slot.closed:
                    await self._run(self._finish_claim, slot)
                waiter = self._waiters.pop((principal.account_id, key), None)
                if waiter is not None:
                    waiter.set()

    async def _claim(self, account_id: str, key: str, fingerprint: str) -> IdempotencySlot:
        slot = None
        try:
            slot = await self._claim_or_wait(account_id, key, fingerprint)
            return slot
        finally:
            if slot is None or slot.claim_id is None:
                # Not the holder: drop the wake-up entry, or one whose holder is another process
                # (and so never sets it) would linger. Co-waiters fall back to polling.
                waiter = self._waiters.get((account_id, key))
                if waiter is not None and not waiter.is_set():
                    del self._waiters[(account_id, key)]

    async def _claim_or_wait(self, account_id: str, key: str, fingerprint: str) -> IdempotencySlot:
        """Claim the key, or wait for whoever holds it and replay their response."""
        deadline = time.monotonic() + self.options.idempotency_wait_s
        poll = 0.02
        while True:
            # Registered before looking, so a holder finishing right after we look still wakes us.
            waiter = self._waiters.setdefault((account_id, key), asyncio.Event())
            got = await self._run(idempotency.try_claim, self.engine, account_id=account_id, key=key,
                                  fingerprint=fingerprint, owner=self._ready_lock().owner,
                                  on_orphan=self._abandon_orphan)
            if isinstance(got, str):
                return IdempotencySlot(claim_id=got)   # its exit wakes this process's waiters
            if got is not None and (replay := idempotency.replay_of(got, fingerprint)) is not None:
                return IdempotencySlot(replay=replay)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Conflict("a request with this Idempotency-Key is still in progress; retry later",
                               code="idempotency_key_in_use")
            try:  # woken at once by a holder in this process; other processes' holders are polled
                await asyncio.wait_for(waiter.wait(), timeout=min(poll, remaining))
            except TimeoutError:
                poll = min(poll * 2, 1.0)

    def _finish_claim(self, slot: IdempotencySlot) -> None:
        """Leaving the block: a reservation neither settled nor refunded is refunded, an open claim dropped."""
        if slot.reservation_id is not None:
            self._slots.pop(slot.reservation_id, None)
        with transaction(self.engine) as conn:
            if slot.reservation_id is not None:
                ledger.refund(conn, reservation_id=slot.reservation_id, status=500)
            idempotency.abandon(conn, claim_id=slot.claim_id)

    def _abandon_orphan(self, got: Any) -> None:
        if isinstance(got, str):
            with transaction(self.engine) as conn:
                idempotency.abandon(conn, claim_id=got)

    # -- management ----------------------------------------------------------------------------
    async def admit_sign_up(self, *, email: str | None, client: str | None) -> str | None:
        """May this sign-up go ahead? Cheapest checks first: enabled, a valid email, then the per-address
        limit (which it counts). Returns the normalised email; raises 403, 400 or 429."""
        if not self.signup_enabled:
            raise Forbidden("sign-up is disabled on this server", code="signup_disabled")
        email = check_email(email)
        if client is not None:  # free credit invites farming: a few sign-ups per address per hour
            await self.limiter.hit(f"signup:{client}", self.options.signup_limit, requests=1, tokens=0)
        return email

    async def admit_sign_in(self, *, email: str, client: str) -> None:
        """Count a web sign-in attempt in the gate's limiter, as sign-ups are: per client address
        first, then per email. Raises 429 (``RateLimited``) over either.

        With Redis the count is shared by every gateway; the web's in-process window
        (web/limits.py, bounded against key spraying) alone let each gateway behind a balancer
        allow its own attempts. Without Redis this repeats that window's limit in-process.
        """
        await self.limiter.hit(f"signin:client:{client}", self.options.signin_limit, requests=1, tokens=0)
        await self.limiter.hit(f"signin:email:{email}", self.options.signin_limit, requests=1, tokens=0)

    async def sign_up(self, *, email: str | None = None, client: str | None = None,
                      admitted: bool = False) -> tuple[AccountInfo, CreatedKey]:
        """An account with the sign-up credit and its first key. ``admitted``: the caller already passed
        ``admit_sign_up`` for this sign-up (the web does, before it hashes the password)."""
        if not admitted:
            email = await self.admit_sign_up(email=email, client=client)
        account, key = await self._run(self.store.create_account, email=email,
                                       credit_micro=self.signup_credit_micro, key=KeySpec(name="default"))
        assert key is not None
        return account, key

    async def create_account(self, *, email: str | None = None, credit_micro: int = 0,
                             key: KeySpec | None = _DEFAULT_KEY) -> tuple[AccountInfo, CreatedKey | None]:
        """An account opened by the operator (no sign-up limits), with ``credit_micro`` and a first key."""
        return await self._run(self.store.create_account, email=email, credit_micro=credit_micro, key=key,
                               note="opening credit")

    async def create_key(self, principal: Principal, spec: KeySpec) -> CreatedKey:
        try:
            wanted = keys.normalize_scopes(spec.scopes)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="scopes") from None
        if not all(keys.allows(principal.scopes, s) for s in wanted):
            raise Forbidden("a key cannot create a key with scopes it does not have")
        return await self._run(self.store.create_key, _own(principal), spec)

    async def list_keys(self, principal: Principal) -> list[KeyInfo]:
        return await self._run(self.store.list_keys, _own(principal))

    async def revoke_key(self, principal: Principal, key_id: str) -> KeyInfo:
        return await self._run(self.store.revoke_key, key_id, account_id=_own(principal))

    async def get_account(self, account_id: str) -> AccountInfo:
        return await self._run(self.store.get_account, account_id)

    async def list_accounts(self, *, limit: int = 100, offset: int = 0) -> list[AccountInfo]:
        return await self._run(self.store.list_accounts, limit=limit, offset=offset)

    async def grant(self, account_id: str, amount_micro: int, *, note: str | None = None) -> int:
        return await self._run(self.store.grant, account_id, amount_micro, note=note)

    async def usage(self, principal: Principal, *, group_by: str = "day", start: datetime | None = None,
                    end: datetime | None = None) -> list[UsageRow]:
        return await self._run(self.store.usage, _own(principal), group_by=group_by, start=start, end=end)

    async def has_keys(self) -> bool:
        return await self._run(self.store.has_keys)


async def build_gate(settings: Settings, **kwargs: Any) -> Gate:
    """The gate a server should use: a started ``DatabaseGate``, or ``OpenGate`` where the auth mode is open.

    The mode is decided once, at start-up (``auth.decide_auth_mode``); keys
    created later take effect at the next start. ``kwargs`` go to from_settings.
    """
    if settings.auth == "open" or (settings.auth == "auto" and _no_database_yet(settings)):
        # No database file yet means no keys: stay open without creating one, so a laptop
        # that never uses accounts never grows a database. decide_auth_mode still refuses
        # an open server on a non-loopback address unless the operator allowed it.
        auth.decide_auth_mode(settings, has_keys=False)
        return OpenGate()
    gate = DatabaseGate.from_settings(settings, **kwargs)
    await gate.start()
    try:
        mode = auth.decide_auth_mode(settings, await gate.has_keys())
    except BaseException:
        await gate.close()
        raise
    if mode == "open":
        await gate.close()
        return OpenGate()
    return gate


def _no_database_yet(settings: Settings) -> bool:
    """True when the database is the default SQLite file and it does not exist."""
    return settings.database_url is None and not settings.default_sqlite_path.exists()


def _own(principal: Principal) -> str:
    if principal.account_id is None:
        raise Forbidden("this needs an account's API key")
    return principal.account_id
