"""Auth modes: open only on loopback unless the operator says otherwise."""

from __future__ import annotations

import asyncio

import pytest

from gigarouter.accounts.auth import decide_auth_mode, is_loopback
from gigarouter.accounts.gate import OpenGate
from gigarouter.accounts.service import DatabaseGate, build_gate
from gigarouter.settings import ConfigError, Settings


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("example.com", False), ("", False),
])
def test_loopback(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(("auth", "host", "has_keys", "allow", "mode"), [
    ("auto", "127.0.0.1", False, False, "open"),
    ("auto", "127.0.0.1", True, False, "keys"),
    ("auto", "0.0.0.0", True, False, "keys"),
    ("auto", "0.0.0.0", False, True, "open"),
    ("required", "0.0.0.0", False, False, "keys"),
    ("required", "127.0.0.1", False, False, "keys"),
    ("open", "127.0.0.1", True, False, "open"),
    ("open", "0.0.0.0", True, True, "open"),
])
def test_modes(auth, host, has_keys, allow, mode):
    settings = Settings(auth=auth, host=host, allow_open_non_loopback=allow)
    assert decide_auth_mode(settings, has_keys) == mode


@pytest.mark.parametrize("auth", ["auto", "open"])
def test_an_open_server_reachable_from_outside_refuses_to_start(auth):
    with pytest.raises(ConfigError, match="allow_open_non_loopback"):
        decide_auth_mode(Settings(auth=auth, host="0.0.0.0"), has_keys=False if auth == "auto" else True)


def test_unknown_auth_mode():
    with pytest.raises(ConfigError, match="auto, required or open"):
        decide_auth_mode(Settings(auth="sometimes"), has_keys=False)


def test_build_gate_follows_the_mode(tmp_path):
    settings = Settings(data_dir=tmp_path, server_secret="test-server-secret-0123456789")

    async def scenario():
        first = await build_gate(settings)                     # loopback, no keys yet: open
        assert isinstance(first, OpenGate)
        with pytest.raises(ConfigError):
            await build_gate(settings.with_(host="0.0.0.0"))
        required = await build_gate(settings.with_(auth="required", host="0.0.0.0"))
        assert isinstance(required, DatabaseGate)
        await required.create_account()                        # now a key exists
        await required.close()
        auto = await build_gate(settings.with_(host="0.0.0.0"))
        assert isinstance(auto, DatabaseGate)
        await auto.close()
        assert isinstance(await build_gate(settings.with_(auth="open", database_url="postgresql://nowhere/x")),
                          OpenGate)                            # open mode never touches the database

    asyncio.run(scenario())
