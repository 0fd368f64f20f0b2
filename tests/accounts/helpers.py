"""Shared test helpers: an account with credit and a key, and the money invariants."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import sqlalchemy as sa

from gigarouter.accounts.gate import Principal
from gigarouter.accounts.service import DatabaseGate
from gigarouter.accounts.store import KeySpec
from gigarouter.settings import Settings

WORKERS = Path(__file__).parent / "workers"


@asynccontextmanager
async def started(settings: Settings, **kwargs) -> AsyncIterator[DatabaseGate]:
    gate = DatabaseGate.from_settings(settings, **kwargs)
    await gate.start()
    try:
        yield gate
    finally:
        await gate.close()


DEFAULT_KEY = KeySpec()     # frozen: one shared default is safe


async def funded(gate: DatabaseGate, credit_micro: int, spec: KeySpec = DEFAULT_KEY) -> tuple[Principal, str]:
    """A new account holding ``credit_micro``; its authenticated principal and its key."""
    account, key = await gate.create_account(credit_micro=credit_micro, key=spec)
    principal = await gate.authenticate(f"Bearer {key.key}", scope="embed")
    return principal, key.key


def check_invariants(engine: sa.Engine, *, quiescent: bool = True) -> dict[str, int]:
    """Ledger, usage records, reservations, keys and balances agree to the micro-unit. Returns totals."""
    with engine.connect() as c:
        q = lambda sql: c.exec_driver_sql(sql).all()  # noqa: E731
        for account, balance, ledger in q(
                "SELECT a.id, a.balance_micro, COALESCE(SUM(l.amount_micro), 0) FROM accounts a "
                "LEFT JOIN ledger_entries l ON l.account_id = a.id GROUP BY a.id, a.balance_micro"):
            assert balance >= 0, account
            assert balance == ledger, f"{account}: balance {balance} != ledger {ledger}"
        if quiescent:
            assert q("SELECT COUNT(*) FROM reservations WHERE state = 'held'")[0][0] == 0
        # Every closed reservation has exactly one usage record, charged iff settled.
        bad = q("SELECT r.id FROM reservations r LEFT JOIN usage_records u ON u.reservation_id = r.id "
                "WHERE (r.state = 'held' AND u.id IS NOT NULL) OR (r.state <> 'held' AND u.id IS NULL) "
                "OR (r.state = 'settled' AND u.cost_micro <> r.cost_micro) "
                "OR (r.state = 'refunded' AND u.cost_micro <> 0)")
        assert not bad, f"reservations without matching usage: {bad[:5]}"
        # Each reservation's ledger entries: -reserved, then +(reserved - final) (settled; the reservation
        # row then holds the final cost) or +reserved (refunded).
        bad = q("SELECT r.id FROM reservations r JOIN ledger_entries l ON l.reservation_id = r.id "
                "GROUP BY r.id, r.state, r.cost_micro HAVING SUM(l.amount_micro) <> "
                "CASE WHEN r.state = 'refunded' THEN 0 ELSE -r.cost_micro END")
        assert not bad, f"reservations whose ledger entries disagree: {bad[:5]}"
        # A settlement only ever gives credit back (final cost <= reserved), never takes more.
        bad = q("SELECT id FROM ledger_entries WHERE kind = 'settle' AND amount_micro < 0")
        assert not bad, f"settlements above their reservation: {bad[:5]}"
        bad = q("SELECT k.id FROM api_keys k LEFT JOIN reservations r ON r.key_id = k.id AND r.state <> 'refunded' "
                "GROUP BY k.id, k.spent_micro HAVING k.spent_micro <> COALESCE(SUM(r.cost_micro), 0)")
        assert not bad, f"keys whose spent_micro disagrees: {bad}"
        usage_cost = q("SELECT COALESCE(SUM(cost_micro), 0) FROM usage_records")[0][0]
        grants = q("SELECT COALESCE(SUM(amount_micro), 0) FROM ledger_entries WHERE kind IN ('grant', 'adjustment')")
        held = q("SELECT COALESCE(SUM(cost_micro), 0) FROM reservations WHERE state = 'held'")[0][0]
        balances = q("SELECT COALESCE(SUM(balance_micro), 0) FROM accounts")[0][0]
        assert grants[0][0] - usage_cost - held == balances
        return {"usage_cost": usage_cost, "balances": balances, "held": held,
                "settled": q("SELECT COUNT(*) FROM reservations WHERE state = 'settled'")[0][0],
                "refunded": q("SELECT COUNT(*) FROM reservations WHERE state = 'refunded'")[0][0]}


def worker_env() -> dict[str, str]:
    """The environment for a worker subprocess: this interpreter's import path, so gigarouter resolves."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env
