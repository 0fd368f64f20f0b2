"""Web sign-up under abuse: refused sign-ups cost no password hash, hashes are capped, an email taken
by an anonymous API account does not lock its owner out, and weak passwords are refused."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gigarouter.accounts.gate import Principal
from gigarouter.accounts.limits import Limit
from gigarouter.accounts.service import DatabaseGate, GateOptions
from gigarouter.errors import Conflict, Overloaded, RateLimited
from gigarouter.settings import Settings
from gigarouter.web import accounts as web_accounts
from gigarouter.web import security
from gigarouter.web.accounts import AccountsPort
from gigarouter.web.users import EmailTaken

PASSWORD = "correct horse battery staple"


def run(tmp_path: Path, scenario, *, signups_per_client: int = 1000) -> None:
    settings = Settings(data_dir=tmp_path, server_secret="web-signup-tests-secret-0123456789")

    async def main():
        gate = DatabaseGate.from_settings(settings, options=GateOptions(
            signup_limit=Limit(requests=signups_per_client, period_s=3600.0)))
        await gate.start()
        try:
            await scenario(gate, AccountsPort(gate))
        finally:
            await gate.close()

    # A thread of its own: the browser tests' session fixture keeps an event loop running in this one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, main()).result()


class CountingHasher:
    """Stands in for argon2: counts calls and the most that ran at once."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.calls = 0
        self.running = 0
        self.most = 0
        self.seconds = seconds
        self._lock = threading.Lock()

    def __call__(self, password: str) -> str:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.seconds)
        with self._lock:
            self.running -= 1
        return f"hashed:{password}"


def test_refused_sign_ups_never_hash(tmp_path, monkeypatch):
    hasher = CountingHasher()
    monkeypatch.setattr(security, "hash_password", hasher)

    async def scenario(gate: DatabaseGate, port: AccountsPort):
        await port.sign_up(email="first@example.com", password=PASSWORD, client="10.0.0.1")
        assert hasher.calls == 1
        results = await asyncio.gather(
            *(port.sign_up(email=f"u{i}@example.com", password=PASSWORD, client="10.0.0.1") for i in range(40)),
            *(port.sign_up(email="first@example.com", password=PASSWORD, client=f"10.0.1.{i}") for i in range(40)),
            return_exceptions=True)
        assert all(isinstance(r, RateLimited) for r in results[:40])      # over the per-address limit
        assert all(isinstance(r, EmailTaken) for r in results[40:])       # a web user has that email
        assert hasher.calls == 1                                          # not one of them hashed

    run(tmp_path, scenario, signups_per_client=1)


def test_at_most_a_few_hashes_run_at_once_and_a_flood_is_refused_fast(tmp_path, monkeypatch):
    hasher = CountingHasher(seconds=0.05)
    monkeypatch.setattr(security, "hash_password", hasher)

    async def scenario(gate: DatabaseGate, port: AccountsPort):
        many = web_accounts.HASH_QUEUE + 20
        results = await asyncio.gather(
            *(port.sign_up(email=f"v{i}@example.com", password=PASSWORD, client=f"10.0.2.{i}") for i in range(many)),
            return_exceptions=True)
        ok = [r for r in results if not isinstance(r, BaseException)]
        busy = [r for r in results if isinstance(r, Overloaded)]
        assert len(ok) + len(busy) == many and len(busy) >= 20
        assert hasher.most <= web_accounts.HASH_SLOTS
        assert int(busy[0].headers["Retry-After"]) >= 1

    run(tmp_path, scenario)


def test_an_api_account_does_not_lock_the_email_out_of_the_web(tmp_path, monkeypatch):
    monkeypatch.setattr(security, "hash_password", CountingHasher())

    async def scenario(gate: DatabaseGate, port: AccountsPort):
        squatter, squatter_key = await gate.sign_up(email="victim@example.com", client="203.0.113.9")  # the API
        user, key = await port.sign_up(email="victim@example.com", password=PASSWORD, client="198.51.100.7")
        mine = await gate.get_account(user.account_id)
        assert mine.email == "victim@example.com" and mine.id != squatter.id
        theirs = await gate.get_account(squatter.id)
        assert theirs.email is None and theirs.balance_micro == squatter.balance_micro   # kept all but the email
        assert (await gate.authenticate(f"Bearer {squatter_key.key}", scope="embed")).account_id == squatter.id
        # Now the email is the web user's: neither the web nor the API can take it again.
        with pytest.raises(EmailTaken):
            await port.sign_up(email="victim@example.com", password=PASSWORD, client="198.51.100.8")
        with pytest.raises(Conflict):
            await gate.sign_up(email="victim@example.com", client="203.0.113.10")
        owner = Principal(account_id=user.account_id, key_id=None, scopes=frozenset({"keys:manage"}))
        assert [k.id for k in await gate.list_keys(owner)] == [key.info.id]

    run(tmp_path, scenario)


@pytest.mark.parametrize(("password", "why"), [
    (" " * 12, "more than spaces"), ("\t\n  \u3000 \u00a0   ", "more than spaces"),
    ("1234567890", "most common"), ("Password123", "most common"), ("qwertyuiop", "most common"),
    ("  iloveyou123 ", "most common"), ("me@example.com", "other than your email"),
])
def test_weak_passwords_are_refused(password, why):
    assert why in security.password_problem(password, "me@example.com")


def test_the_common_list_is_small_and_loaded_once():
    listed = security.common_passwords()
    assert 1000 < len(listed) < 5000 and all(len(p) >= security.MIN_PASSWORD for p in listed)
    assert security.common_passwords() is listed
    assert security.password_problem(PASSWORD) is None
