"""Integers, amounts and dates out of range on the accounts routes: a 400 (or 404), never a 500 or a float.

On SQLite an integer that overflows 64 bits in ``balance + amount`` silently becomes a REAL: a
grant big enough would commit a float balance and the books would drift from the ledger. So
every amount is bounded (``ledger.MAX_AMOUNT_MICRO``) and a balance never passes
``ledger.MAX_BALANCE_MICRO``, far inside BIGINT. Each test runs on SQLite and on Postgres.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from gigarouter.accounts import ledger
from gigarouter.accounts.db import is_sqlite, make_engine
from gigarouter.accounts.service import DatabaseGate
from gigarouter.accounts.store import MAX_RATE, AccountStore, KeySpec
from gigarouter.errors import InvalidRequest, NotFound
from tests.accounts.conftest import SECRET
from tests.accounts.helpers import check_invariants
from tests.accounts.test_routes import bearer, build_app


@pytest.fixture
def store(settings) -> Iterator[AccountStore]:
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        yield AccountStore(engine, SECRET.encode())
    finally:
        engine.dispose()


def test_a_balance_stays_an_integer_within_bigint(store):
    account, _ = store.create_account(credit_micro=ledger.MAX_AMOUNT_MICRO, key=None)
    # Bring the balance to 5 below the cap the honest way (grants, each in the ledger) but fast: one
    # maximal grant per step would take 1000 transactions, so the test books the difference directly.
    gap = ledger.MAX_BALANCE_MICRO - 5 - ledger.MAX_AMOUNT_MICRO
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE accounts SET balance_micro = balance_micro + :g WHERE id = :a"),
                     {"g": gap, "a": account.id})
        conn.execute(sa.text("INSERT INTO ledger_entries (account_id, kind, amount_micro, created_at) "
                             "VALUES (:a, 'grant', :g, CURRENT_TIMESTAMP)"), {"g": gap, "a": account.id})
    assert store.grant(account.id, 5) == ledger.MAX_BALANCE_MICRO
    for amount in (1, ledger.MAX_AMOUNT_MICRO):
        with pytest.raises(InvalidRequest, match="at most"):
            store.grant(account.id, amount)
    for amount in (ledger.MAX_AMOUNT_MICRO + 1, 2**63, 2**64, -(2**63), 10**5000):
        with pytest.raises(InvalidRequest):
            store.grant(account.id, amount)
    for amount in (1.0, 1e30, float("nan"), True, "5"):
        with pytest.raises(InvalidRequest, match="integer"):
            store.grant(account.id, amount)
    with store.engine.connect() as conn:
        balance = conn.execute(sa.text("SELECT balance_micro FROM accounts WHERE id = :a"),
                               {"a": account.id}).scalar_one()
        if is_sqlite(store.engine):
            assert conn.execute(sa.text("SELECT typeof(balance_micro) FROM accounts")).scalars().all() == [
                "integer"]
    assert type(balance) is int and balance == ledger.MAX_BALANCE_MICRO
    check_invariants(store.engine)


def test_opening_credit_and_key_limits_are_bounded(store):
    with pytest.raises(InvalidRequest):
        store.create_account(credit_micro=ledger.MAX_AMOUNT_MICRO + 1, key=None)
    with pytest.raises(ValueError):
        store.create_account(credit_micro=1.5, key=None)
    account, _ = store.create_account(key=None)
    for spec in (KeySpec(rpm=MAX_RATE + 1), KeySpec(tpm=2**63), KeySpec(rpm=0), KeySpec(tpm=1.5),
                 KeySpec(spend_cap_micro=ledger.MAX_BALANCE_MICRO + 1), KeySpec(spend_cap_micro=-1),
                 KeySpec(name="a\x00b")):
        with pytest.raises(InvalidRequest):
            store.create_key(account.id, spec)
    assert store.create_key(account.id, KeySpec(rpm=MAX_RATE, tpm=MAX_RATE)).info.tpm == MAX_RATE
    for bad_id in ("acct_\x00", "x" * 5000):
        with pytest.raises(NotFound):
            store.get_account(bad_id)
        with pytest.raises(NotFound):
            store.revoke_key(bad_id)
    check_invariants(store.engine)


def test_usd_amounts_are_bounded_before_they_become_integers():
    for bad in ("1e999999999", "-1e999999999", "1e30", "NaN", "sNaN", "-Infinity", "1" * 5000, "0x10", ""):
        with pytest.raises(ValueError):
            ledger.usd_to_micro(bad)
    assert ledger.usd_to_micro(str(ledger.MAX_AMOUNT_MICRO // ledger.MICRO)) == ledger.MAX_AMOUNT_MICRO


@pytest.fixture
def client(settings) -> Iterator[TestClient]:
    with TestClient(build_app(DatabaseGate.from_settings(settings))) as c:
        gate: DatabaseGate = c.app.state.gate
        _, operator = c.portal.call(lambda: gate.create_account(key=KeySpec(scopes=frozenset({"admin"}))))
        c.headers.update(bearer(operator.key))
        c.account_id = operator.info.account_id
        yield c


HUGE = "9" * 5000
# One app per database for many cases: each case is one request, the fixture is the slow part.
PAGING = [f"offset={2**63}", f"offset={HUGE}", "offset=-1", "offset=1e3", "limit=0", f"limit={2**64}", "limit=NaN"]
DATES = ["start=0001-01-01T00:00:00%2B01:00", "end=9999-12-31T23:59:59-01:00", "start=%00", "start=99999-01-01",
         f"start={HUGE}", "end=2026-02-30", "start=2026-01-01T25:00"]
KEY_BODIES = [{"rpm": MAX_RATE + 1}, {"tpm": 2**63}, {"tpm": 10**30}, {"rpm": 0}, {"spend_cap_micro": 2**63},
              {"spend_cap_micro": -1}, {"expires_at": "0001-01-01T00:00:00+05:00"}, {"name": "a\u0000b"},
              {"scopes": ["embed"] * 1000}]
GRANT_BODIES = [{"amount_micro": 2**63}, {"amount_micro": -(2**63)}, {"amount_micro": ledger.MAX_AMOUNT_MICRO + 1},
                {"amount_usd": "9223372036854.775808"}, {"amount_usd": "1e999999999"}, {"amount_micro": 0},
                {"amount_micro": 1, "note": "a\u0000b"}, {"amount_micro": 1.5}]


def test_out_of_range_paging_dates_limits_and_amounts_are_400(client):
    for query in PAGING:
        response = client.get(f"/v1/admin/accounts?{query}")
        assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error", query
    for query in DATES:
        response = client.get(f"/v1/usage?{query}")
        assert response.status_code == 400 and response.json()["error"]["param"] in ("start", "end"), query
    for body in KEY_BODIES:
        assert client.post("/v1/keys", json=body).status_code == 400, body
    for body in GRANT_BODIES:
        response = client.post("/v1/admin/credits", json={"account_id": client.account_id, **body})
        assert response.status_code == 400, (body, response.text)
    assert client.get("/v1/usage?start=0001-01-01&end=9999-12-31T23:59:59.999999%2B00:00").status_code == 200


def test_odd_ids_are_404(client):
    for key_id in ("key_%00", "x" * 5000, "%ED%A0%80"):
        assert client.delete(f"/v1/keys/{key_id}").status_code == 404, key_id
    for account_id in ("acct_\u0000", "y" * 41):
        response = client.post("/v1/admin/credits", json={"account_id": account_id, "amount_micro": 1})
        assert response.status_code in (400, 404), response.text


def test_a_grant_past_the_balance_cap_is_a_400_and_books_stay_integer(client, settings):
    for _ in range(3):
        assert client.post("/v1/admin/credits", json={"account_id": client.account_id,
                                                      "amount_micro": ledger.MAX_AMOUNT_MICRO}).status_code == 201
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        with engine.begin() as conn:   # near the cap, booked in the ledger too (see above)
            gap = ledger.MAX_BALANCE_MICRO - 3 * ledger.MAX_AMOUNT_MICRO - 10
            conn.execute(sa.text("UPDATE accounts SET balance_micro = balance_micro + :g WHERE id = :a"),
                         {"g": gap, "a": client.account_id})
            conn.execute(sa.text("INSERT INTO ledger_entries (account_id, kind, amount_micro, created_at) "
                                 "VALUES (:a, 'grant', :g, CURRENT_TIMESTAMP)"), {"g": gap, "a": client.account_id})
        refused = client.post("/v1/admin/credits", json={"account_id": client.account_id, "amount_micro": 11})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "balance_limit"
        ok = client.post("/v1/admin/credits", json={"account_id": client.account_id, "amount_usd": "0.00001"})
        assert ok.status_code == 201 and ok.json()["balance_micro"] == ledger.MAX_BALANCE_MICRO
        check_invariants(engine)
    finally:
        engine.dispose()
