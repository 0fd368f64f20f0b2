"""Crash recovery: close the reservations and idempotency claims that a dead gateway left behind.

The rule: a reservation still ``held`` after its gateway died is REFUNDED
(usage status 0). Settlement commits before the response is sent, so a held
reservation means no response was ever produced: the client saw a broken
connection and owes nothing. Its idempotency claim is released with it, so
a retry with the same key runs once and is charged once.

Which gateway is dead? Each gateway process holds a lock for its lifetime
that the operating system or database server drops the moment the process
dies, SIGKILL included:

- Postgres: a session-level advisory lock (classid ``LOCK_CLASS``, objid =
  the gateway's owner id), held on a dedicated connection.
- SQLite: an ``flock`` on ``<database>.gateways/<owner>.lock`` (SQLite's
  gateways share a host with the database file).

Recovery only touches an owner whose lock it can take itself, so gateways
that share a database never refund each other's work in flight. It runs at
start-up and then periodically (service.py), which also covers a gateway that
died while others kept running.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Protocol

from sqlalchemy import Engine, NullPool, create_engine, exc, select, text

from gigarouter.accounts import idempotency, ledger
from gigarouter.accounts.db import is_sqlite, sqlite_path, transaction
from gigarouter.accounts.tables import IdempotencyRecord, Reservation, utcnow

try:
    import fcntl
except ImportError:  # Windows: one gateway per SQLite database is assumed
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_CLASS = 0x6772_6F76                    # advisory lock classid for gateway liveness
#: Usage status of a request refunded by recovery: the client never got an answer.
STATUS_NO_RESPONSE = 0


class InstanceLock(Protocol):
    owner: int

    def probe(self, owner: int) -> bool:
        """True when ``owner`` is dead; its lock is then held here until ``release`` is called."""

    def release(self, owner: int) -> None: ...

    def keepalive(self) -> None:
        """Called every sweep: make sure this process still holds its own lock."""

    def close(self) -> None: ...


def _new_owner() -> int:
    return secrets.randbelow(2**31 - 2) + 1


class PostgresLock:
    def __init__(self, engine: Engine) -> None:
        # A connection of its own, outside the pool: the lock lives as long as it does.
        self._engine = create_engine(engine.url, poolclass=NullPool)
        self._conn = self._engine.connect()
        self._guard = threading.Lock()
        while True:
            self.owner = _new_owner()
            if self._try(self.owner):
                break

    def _try(self, owner: int) -> bool:
        with self._guard:
            got = self._conn.execute(text("SELECT pg_try_advisory_lock(:c, :o)"),
                                     {"c": LOCK_CLASS, "o": owner}).scalar_one()
            self._conn.commit()  # session-level locks outlive the transaction
            return bool(got)

    def probe(self, owner: int) -> bool:
        return owner != self.owner and self._try(owner)

    def release(self, owner: int) -> None:
        with self._guard:
            self._conn.execute(text("SELECT pg_advisory_unlock(:c, :o)"), {"c": LOCK_CLASS, "o": owner})
            self._conn.commit()

    def keepalive(self) -> None:
        """Touch the lock's connection (idle sessions get cut) and re-take the lock if the session was lost.

        While the session is gone another gateway may see this one as dead and
        refund its requests in flight; their settlements then find the
        reservations closed and charge nothing, so the books still agree.
        """
        try:
            with self._guard:
                self._conn.execute(text("SELECT 1")).scalar_one()
                self._conn.commit()
            return
        except exc.DBAPIError:
            log.warning("lost the gateway liveness session; reconnecting")
        with self._guard:
            self._conn.close()
            self._conn = self._engine.connect()
        if not self._try(self.owner):
            log.error("gateway owner %s is locked by another session (a recovery in progress)", self.owner)

    def close(self) -> None:
        self._conn.close()
        self._engine.dispose()


class FileLock:
    """``flock`` files beside the SQLite database; the kernel releases them when a process dies."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True)
        self._held: dict[int, int] = {}
        while True:
            self.owner = _new_owner()
            if self._try(self.owner):
                break

    def _path(self, owner: int) -> Path:
        return self._dir / f"{owner}.lock"

    def _try(self, owner: int) -> bool:
        # A missing file (never created, or removed by an earlier recovery) has no live holder either.
        fd = os.open(self._path(owner), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._held[owner] = fd
        return True

    def probe(self, owner: int) -> bool:
        return owner != self.owner and self._try(owner)

    def keepalive(self) -> None:
        return None  # the kernel holds an flock for as long as the process lives

    def release(self, owner: int) -> None:
        fd = self._held.pop(owner, None)
        if fd is not None:
            self._path(owner).unlink(missing_ok=True)
            os.close(fd)

    def close(self) -> None:
        for owner in list(self._held):
            self.release(owner)


class SoleLock:
    """No way to see other processes (in-memory SQLite, no fcntl): every other owner is dead."""

    def __init__(self) -> None:
        self.owner = _new_owner()

    def probe(self, owner: int) -> bool:
        return owner != self.owner

    def release(self, owner: int) -> None:
        return None

    def keepalive(self) -> None:
        return None

    def close(self) -> None:
        return None


def instance_lock(engine: Engine) -> InstanceLock:
    if not is_sqlite(engine):
        return PostgresLock(engine)
    path = sqlite_path(engine)
    if path is None or fcntl is None:
        return SoleLock()
    return FileLock(path.with_name(path.name + ".gateways"))


@dataclass(frozen=True)
class RecoveryReport:
    refunded: int = 0                # held reservations of dead gateways, refunded
    released_claims: int = 0         # in-flight idempotency claims of dead gateways, dropped
    purged: int = 0                  # completed idempotency records past their retention


def recover(engine: Engine, lock: InstanceLock) -> RecoveryReport:
    lock.keepalive()
    refunded = released = 0
    for owner in _owners_with_open_work(engine):
        if not lock.probe(owner):
            continue  # alive: its requests are still running
        try:
            owner_refunded, owner_released = recover_owner(engine, owner)
            refunded += owner_refunded
            released += owner_released
        finally:
            lock.release(owner)
    with transaction(engine) as conn:
        purged = idempotency.purge_expired(conn)
    report = RecoveryReport(refunded=refunded, released_claims=released, purged=purged)
    if refunded or released:
        log.warning("recovered from a dead gateway: %s", report)
    return report


def recover_owner(engine: Engine, owner: int) -> tuple[int, int]:
    """Refund the held reservations and drop the in-flight claims of one dead owner, whose lock the caller
    holds (``lock.probe(owner)`` said dead); (refunded, released)."""
    refunded = _refund_owner(engine, owner)
    with transaction(engine) as conn:
        return refunded, idempotency.release_owner(conn, owner=owner)


def _owners_with_open_work(engine: Engine) -> set[int]:
    with transaction(engine, write=False) as conn:
        held = conn.execute(select(Reservation.owner).where(Reservation.state == "held").distinct()).scalars()
        claims = conn.execute(select(IdempotencyRecord.owner)
                              .where(IdempotencyRecord.state == "in_flight").distinct()).scalars()
        return set(held) | set(claims)


def refund_stale(engine: Engine, *, owner: int, older_than_s: float) -> int:
    """Refund this gateway's own reservations held for longer than any request may run.

    A live gateway's reservation is closed by the request that took it; one
    that outlives ``older_than_s`` was lost to a bug, and would otherwise hold
    the credit until the process exits.
    """
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    return _refund_owner(engine, owner, Reservation.created_at < cutoff)


def _refund_owner(engine: Engine, owner: int, *conditions) -> int:
    with transaction(engine, write=False) as conn:
        ids = conn.execute(select(Reservation.id).where(Reservation.state == "held", Reservation.owner == owner,
                                                        *conditions)).scalars().all()
    count = 0
    for reservation_id in ids:  # one short transaction each: no long lock on a busy database
        with transaction(engine) as conn:
            count += ledger.refund(conn, reservation_id=reservation_id, status=STATUS_NO_RESPONSE)
    return count
