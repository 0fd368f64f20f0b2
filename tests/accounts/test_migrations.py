"""Migrations: an empty database to head, a database at the previous revision (with data) to head, no drift."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from gigarouter.accounts import migrations
from gigarouter.accounts.db import make_engine, transaction
from gigarouter.accounts.keys import generate
from gigarouter.accounts.tables import Base
from gigarouter.settings import ConfigError, Settings
from tests.accounts.conftest import SECRET
from tests.accounts.helpers import check_invariants, started

PREVIOUS = "0001"


def test_empty_database_upgrades_to_head_matching_the_models(database_url):
    from gigarouter.batches.tables import metadata as batches
    from gigarouter.onboarding.store import metadata as onboarding

    assert migrations.current(database_url) is None
    migrations.upgrade(database_url)
    assert migrations.current(database_url) == migrations.head()
    migrations.upgrade(database_url)                                # again: a no-op
    engine = make_engine(database_url)
    # The packages whose tables ride these migrations, each compared on its own tables. (The web
    # users' tables are left out: their foreign keys name the accounts table of another MetaData,
    # which alembic's comparison cannot resolve.)
    for declared in (Base.metadata, batches, onboarding):
        ours = set(declared.tables)

        def include_name(name, type_, parents, ours=ours):
            return (name if type_ == "table" else parents.get("table_name")) in ours | {None}

        with transaction(engine, write=False) as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "include_name": include_name})
            drift = compare_metadata(context, declared)
        assert drift == [], (sorted(ours), drift)
    engine.dispose()


def _seed_previous_revision(url: str) -> str:
    """Rows written as a 0001 gateway would have written them: an account, a key, a charged request."""
    now = datetime.now(UTC)
    new = generate(SECRET.encode())
    engine = sa.create_engine(url)
    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO accounts (id, email, balance_micro, disabled, created_at) "
                          "VALUES ('acct_old', 'old@example.com', 900, false, :now)"), {"now": now})
        c.execute(sa.text("INSERT INTO api_keys (id, account_id, prefix, secret_hmac, scopes, created_at, spent_micro) "
                          "VALUES ('key_old', 'acct_old', :p, :d, 'embed usage:read', :now, 100)"),
                  {"p": new.prefix, "d": new.digest, "now": now})
        c.execute(sa.text("INSERT INTO reservations (id, account_id, key_id, request_id, model, tokens, "
                          "price_micro_per_million, cost_micro, state, owner, created_at, closed_at) VALUES "
                          "('res_old', 'acct_old', 'key_old', 'req_old', 'm', 100, 1000000, 100, 'settled', 1, "
                          ":now, :now)"), {"now": now})
        c.execute(sa.text("INSERT INTO ledger_entries (account_id, kind, amount_micro, reservation_id, created_at) "
                          "VALUES ('acct_old', 'grant', 1000, NULL, :now), ('acct_old', 'reserve', -100, 'res_old', "
                          ":now), ('acct_old', 'settle', 0, 'res_old', :now)"), {"now": now})
        c.execute(sa.text("INSERT INTO usage_records (reservation_id, request_id, account_id, key_id, model, tokens, "
                          "cost_micro, status, latency_ms, created_at) VALUES ('res_old', 'req_old', 'acct_old', "
                          "'key_old', 'm', 100, 100, 200, 5.0, :now)"), {"now": now})
    engine.dispose()
    return new.key


def test_previous_revision_with_data_upgrades_and_keeps_working(database_url, tmp_path):
    migrations.upgrade(database_url, PREVIOUS)
    assert migrations.current(database_url) == PREVIOUS
    key = _seed_previous_revision(database_url)
    settings = Settings(data_dir=tmp_path, database_url=database_url, server_secret=SECRET)

    async def refuses_old_schema():
        try:
            async with started(settings, migrate=False):
                raise AssertionError("a gateway started on an old schema")
        except ConfigError as exc:
            return str(exc)

    assert "gigarouter db upgrade" in asyncio.run(refuses_old_schema())
    migrations.upgrade(database_url)
    assert migrations.current(database_url) == migrations.head()

    async def use_it():
        async with started(settings) as gate:
            principal = await gate.authenticate(f"Bearer {key}", scope="embed")
            async with gate.idempotency(principal, "new-feature", "fp") as slot:
                charge = await gate.reserve(principal, model="m", tokens=50, price_per_million_usd=1.0,
                                            request_id="req_new", idempotency=slot)
                await gate.settle(charge, status=200, latency_ms=1.0, response=b"{}")
            return await gate.usage(principal, group_by="model")

    usage = asyncio.run(use_it())
    assert [(u.group, u.requests, u.cost_micro) for u in usage] == [("m", 2, 150)]
    engine = sa.create_engine(database_url)
    assert check_invariants(engine)["balances"] == 850
    with engine.connect() as conn:
        keys_by_request = dict(conn.execute(sa.text("SELECT request_id, idempotency_key FROM usage_records")).all())
    engine.dispose()
    assert keys_by_request == {"req_old": None, "req_new": "new-feature"}


def test_downgrade_then_upgrade_round_trips(database_url):
    migrations.upgrade(database_url)
    migrations.downgrade(database_url, PREVIOUS)
    assert migrations.current(database_url) == PREVIOUS
    migrations.upgrade(database_url)
    assert migrations.current(database_url) == migrations.head()


def test_0002_database_with_data_upgrades_through_0003(database_url):
    """A database at 0002 (what gateways ran before the web tables and routing) gains the provider columns."""
    migrations.upgrade(database_url, "0002")
    _seed_previous_revision(database_url)
    engine = sa.create_engine(database_url)

    def usage_columns() -> set[str]:
        return {c["name"] for c in sa.inspect(engine).get_columns("usage_records")}

    try:
        assert not {"provider", "upstream_tokens"} & usage_columns()
        migrations.upgrade(database_url)
        assert migrations.current(database_url) == migrations.head()
        assert {"provider", "upstream_tokens"} <= usage_columns()
        with engine.begin() as conn:
            old = conn.execute(sa.text("SELECT provider, upstream_tokens, cost_micro FROM usage_records "
                                       "WHERE request_id = 'req_old'")).one()
            assert tuple(old) == (None, None, 100)
            conn.execute(sa.text("UPDATE usage_records SET provider = :p, upstream_tokens = 7"), {"p": "e" * 100})
        migrations.downgrade(database_url, "w001")                 # and back: the columns go, the rows stay
        assert not {"provider", "upstream_tokens"} & usage_columns()
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT COUNT(*) FROM usage_records")).scalar_one() == 1
    finally:
        engine.dispose()
