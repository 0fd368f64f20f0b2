"""Auth modes: open only on loopback unless the operator says otherwise."""

from __future__ import annotations

import pytest

from gigarouter.accounts.auth import decide_auth_mode, is_loopback
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
