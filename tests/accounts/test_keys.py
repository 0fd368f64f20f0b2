"""API keys: format, HMAC storage, the server secret, and every way a key can be refused."""

from __future__ import annotations

import asyncio
import os
import re
import stat
from datetime import timedelta

import pytest
import sqlalchemy as sa

from gigarouter.accounts import keys
from gigarouter.accounts.store import KeySpec
from gigarouter.accounts.tables import utcnow
from gigarouter.errors import Forbidden, Unauthorized
from gigarouter.settings import ConfigError, Settings
from tests.accounts.helpers import started


def test_key_format_and_hmac():
    secret = b"s" * 32
    new = keys.generate(secret)
    assert new.key.startswith(f"gr-{new.prefix}-") and len(new.key) == 3 + 10 + 1 + 40
    assert keys.parse(new.key) == new.prefix
    assert keys.verify(secret, new.key, new.digest)
    assert not keys.verify(b"t" * 32, new.key, new.digest)          # another server secret
    assert new.key not in new.digest and new.digest == keys.digest(secret, new.key)
    for bad in ("", "gr-", new.key + "x", new.key.upper(), "sk-" + new.key[3:], new.key.replace("-", "_")):
        assert keys.parse(bad) is None


@pytest.mark.parametrize(("header", "key"), [
    ("Bearer gr-abc", "gr-abc"), ("bearer  gr-abc ", "gr-abc"), (None, None), ("", None),
    ("Basic Zm9vOmJhcg==", None), ("Bearer", None), ("gr-abc", None),
])
def test_bearer_parsing(header, key):
    assert keys.from_authorization(header) == key


def test_scopes():
    assert keys.normalize_scopes(None) == keys.DEFAULT_SCOPES
    assert keys.allows(frozenset({"admin"}), "embed")                 # admin implies every scope
    assert not keys.allows(frozenset({"embed"}), "usage:read")
    with pytest.raises(ValueError):
        keys.normalize_scopes(["embed", "root"])
    with pytest.raises(ValueError):
        keys.normalize_scopes([])


def test_server_secret_file_is_private_and_stable(tmp_path):
    settings = Settings(data_dir=tmp_path / "d")
    first = keys.server_secret(settings)
    path = tmp_path / "d" / keys.SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.server_secret(settings) == first and len(first) == 64
    assert [p.name for p in path.parent.iterdir()] == [keys.SECRET_FILE]     # no temporary file left
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        keys.server_secret(settings)
    with pytest.raises(ConfigError):
        keys.server_secret(Settings(data_dir=tmp_path, server_secret="short"))


def test_the_database_holds_no_usable_key(settings):
    async def scenario():
        async with started(settings) as gate:
            _, created = await gate.create_account(credit_micro=0)
            return created

    created = asyncio.run(scenario())
    engine = sa.create_engine(settings.resolved_database_url)
    with engine.connect() as conn:
        dump = " ".join(str(v) for row in conn.exec_driver_sql("SELECT * FROM api_keys").all() for v in row)
    engine.dispose()
    secret_part = created.key.rsplit("-", 1)[1]
    assert created.info.prefix in dump and secret_part not in dump


def test_key_lifecycle_refusals(settings):
    """Revoked, expired, malformed, unknown, tampered and wrong-scope keys get 401/403, never a principal."""

    async def scenario():
        async with started(settings) as gate:
            account, good = await gate.create_account(credit_micro=1_000)
            auth = lambda key, scope="embed": gate.authenticate(f"Bearer {key}", scope=scope)  # noqa: E731
            principal = await auth(good.key)
            assert principal.account_id == account.id and principal.key_id == good.info.id

            refusals = {}
            for name, header in {"missing": None, "not bearer": f"Token {good.key}"}.items():
                refusals[name] = await _refusal(gate.authenticate(header, scope="embed"))
            tampered = good.key[:-1] + ("a" if good.key[-1] != "a" else "b")
            unknown = keys.generate(b"x" * 32).key
            for name, key in {"malformed": "gr-nope", "tampered": tampered, "unknown": unknown}.items():
                refusals[name] = await _refusal(auth(key))

            embed_only = await gate.create_key(principal, KeySpec(scopes=frozenset({"embed"})))
            refusals["wrong scope"] = await _refusal(auth(embed_only.key, "usage:read"))
            refusals["admin scope"] = await _refusal(auth(good.key, "admin"))

            expiring = await gate.create_key(principal, KeySpec(expires_at=utcnow() - timedelta(seconds=1)))
            refusals["expired"] = await _refusal(auth(expiring.key))

            await gate.revoke_key(principal, embed_only.info.id)
            refusals["revoked"] = await _refusal(auth(embed_only.key))
            return refusals

    refusals = asyncio.run(scenario())
    assert {name: type(exc) for name, exc in refusals.items()} == {
        "missing": Unauthorized, "not bearer": Unauthorized, "malformed": Unauthorized, "tampered": Unauthorized,
        "unknown": Unauthorized, "wrong scope": Forbidden, "admin scope": Forbidden, "expired": Unauthorized,
        "revoked": Unauthorized}
    assert "revoked" in refusals["revoked"].message and "expired" in refusals["expired"].message
    for exc in refusals.values():
        assert not re.search(r"gr-[a-z0-9]{10}", exc.message)              # a key is never echoed


async def _refusal(call) -> Exception:
    with pytest.raises((Unauthorized, Forbidden)) as info:
        await call
    return info.value


def test_disabled_account_is_forbidden(settings):
    async def scenario():
        async with started(settings) as gate:
            account, created = await gate.create_account(credit_micro=10)
            with gate.engine.begin() as conn:
                conn.execute(sa.text("UPDATE accounts SET disabled = true WHERE id = :a"), {"a": account.id})
            with pytest.raises(Forbidden):
                await gate.authenticate(f"Bearer {created.key}", scope="embed")

    asyncio.run(scenario())


def test_keys_cannot_escalate_or_touch_other_accounts(settings):
    async def scenario():
        async with started(settings) as gate:
            _, mine = await gate.create_account()
            _, theirs = await gate.create_account()
            me = await gate.authenticate(f"Bearer {mine.key}", scope="keys:manage")
            with pytest.raises(Forbidden):
                await gate.create_key(me, KeySpec(scopes=frozenset({"admin"})))
            with pytest.raises(Exception) as info:
                await gate.revoke_key(me, theirs.info.id)
            assert info.value.status == 404
            assert [k.id for k in await gate.list_keys(me)] == [mine.info.id]
            assert await gate.has_keys()

    asyncio.run(scenario())


def test_only_usable_keys_count_for_the_auth_mode(settings):
    async def scenario():
        async with started(settings) as gate:
            assert not await gate.has_keys()
            account, _ = await gate.create_account(key=KeySpec(expires_at=utcnow() - timedelta(seconds=1)))
            assert not await gate.has_keys()                      # expired
            created = gate.store.create_key(account.id, KeySpec())        # the synchronous store, as the CLI uses it
            assert await gate.has_keys()
            gate.store.revoke_key(created.info.id)
            assert not await gate.has_keys()                      # revoked

    asyncio.run(scenario())
