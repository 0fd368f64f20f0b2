"""Who the client is and what the outside may see: open mode only over loopback (the socket really
bound, not the ``host`` setting), forwarded headers only from ``trusted_proxies``, /metrics and the
schema closed with ``public_metrics = false``, no key in the access log, a private SQLite file."""

from __future__ import annotations

import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from fastapi.testclient import TestClient
from starlette.types import Receive, Scope, Send

from gigarouter.accounts import keys, migrations
from gigarouter.accounts.db import make_engine
from gigarouter.accounts.store import AccountStore, KeySpec
from gigarouter.api.app import create_app
from gigarouter.api.middleware import ClientAddressMiddleware, redact
from gigarouter.settings import ConfigError, Settings, load_settings
from tests.conftest import FakeEngine, fake_loader, free_port, wait_ready, wait_until_ready

SECRET = "network-tests-secret-0123456789"


def outside_address() -> str | None:
    """This machine's address on a non-loopback interface, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))            # no packet is sent: this only picks a route
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.fixture
def uvicorn_on_all_interfaces(tmp_path) -> Iterator[tuple[int, list[str]]]:
    """The app served as `uvicorn --host 0.0.0.0` would, with the settings' host left at 127.0.0.1."""
    port = free_port()
    settings = Settings(data_dir=tmp_path)          # host 127.0.0.1, no database: open mode
    app = create_app(settings, loader=fake_loader(FakeEngine()))
    lines: list[str] = []
    server = uvicorn.Server(uvicorn.Config(app, host="0.0.0.0", port=port, log_level="info", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until_ready(f"http://127.0.0.1:{port}", alive=thread.is_alive)
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("uvicorn.access").addHandler(handler)
    try:
        yield port, lines
    finally:
        logging.getLogger("uvicorn.access").removeHandler(handler)
        server.should_exit = True
        thread.join(timeout=30)


def test_open_mode_is_decided_by_the_socket_not_the_host_setting(uvicorn_on_all_interfaces):
    port, _ = uvicorn_on_all_interfaces
    assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 200     # loopback: open
    outside = outside_address()
    if outside is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect to")
    for path in ("/v1/models", "/health", "/models"):
        refused = httpx.get(f"http://{outside}:{port}{path}")
        assert refused.status_code == 403, (path, refused.text)
        assert refused.json()["error"]["code"] == "open_mode_loopback_only"
    embed = httpx.post(f"http://{outside}:{port}/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "x"})
    assert embed.status_code == 403


def test_a_key_in_a_url_never_reaches_the_access_log(uvicorn_on_all_interfaces):
    port, lines = uvicorn_on_all_interfaces
    key = "gr-abcdefghij-" + "S3cr3t" * 6 + "abcd"
    for url in (f"/v1/models?api_key={key}", f"/v1/models?key={key}&x=1", "/health?token=hunter2hunter2",
                f"/v1/models/{key}", f"/v1/models?Authorization=Bearer%20{key}"):
        httpx.get(f"http://127.0.0.1:{port}{url}")
    deadline = time.monotonic() + 5
    while len(lines) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    logged = "\n".join(lines)
    assert len(lines) >= 5 and "/v1/models" in logged and "gr-abcdefghij-" in logged   # the public prefix stays
    assert "S3cr3t" not in logged and "hunter2" not in logged


def test_redaction_rules():
    key = "gr-0123456789-" + "A" * 40
    line = f'1.2.3.4 - "GET /x?api_key={key}&b=2 HTTP/1.1"'
    assert redact(line) == '1.2.3.4 - "GET /x?api_key=[redacted]&b=2 HTTP/1.1"'
    assert redact(f"/v1/x/{key}") == "/v1/x/gr-0123456789-[redacted]"
    assert redact("/models?sort=price&license=mit") == "/models?sort=price&license=mit"


# -- trusted proxies --------------------------------------------------------------------------------

async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    body = f"{scope['client'][0]} {scope['scheme']}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def seen(peer: str, headers: dict[str, str], trusted: tuple[str, ...]) -> str:
    app = ClientAddressMiddleware(echo, settings=Settings(trusted_proxies=trusted))
    return TestClient(app, client=(peer, 1234)).get("/", headers=headers).text


@pytest.mark.parametrize(("peer", "headers", "trusted", "expected"), [
    # Nobody is trusted by default: the headers are ignored, even from loopback.
    ("127.0.0.1", {"x-forwarded-for": "6.6.6.6", "x-forwarded-proto": "https"}, (), "127.0.0.1 http"),
    # From a trusted proxy: the client it saw, and its scheme.
    ("10.0.0.2", {"x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "https"}, ("10.0.0.0/8",),
     "203.0.113.7 https"),
    # A client that sends its own X-Forwarded-For cannot pick its address: the right-most
    # untrusted hop is the one the trusted proxy saw.
    ("10.0.0.2", {"x-forwarded-for": "1.1.1.1, 203.0.113.7"}, ("10.0.0.0/8",), "203.0.113.7 http"),
    # Two trusted proxies in a row.
    ("10.0.0.2", {"x-forwarded-for": "203.0.113.7, 10.0.0.9"}, ("10.0.0.0/8",), "203.0.113.7 http"),
    # The headers from a peer that is not a trusted proxy are ignored.
    ("198.51.100.4", {"x-forwarded-for": "1.1.1.1", "x-forwarded-proto": "https"}, ("10.0.0.0/8",),
     "198.51.100.4 http"),
    ("::1", {"x-forwarded-for": "2001:db8::5"}, ("::1",), "2001:db8::5 http"),
])
def test_forwarded_headers_only_from_trusted_proxies(peer, headers, trusted, expected):
    assert seen(peer, headers, trusted) == expected


def test_trusted_proxies_is_checked_and_read_from_the_config(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('trusted_proxies = ["127.0.0.1", "10.0.0.0/8"]\npublic_metrics = false\n')
    settings = load_settings(config)
    assert settings.trusted_proxies == ("127.0.0.1", "10.0.0.0/8") and settings.public_metrics is False
    for bad in (["nope"], "10.0.0.1", [1]):
        with pytest.raises(ConfigError):
            Settings(trusted_proxies=bad)


def test_sign_up_limit_counts_the_real_client_behind_a_trusted_proxy(tmp_path):
    settings = Settings(data_dir=tmp_path, server_secret=SECRET, auth="required", trusted_proxies=("10.0.0.1",))
    with TestClient(create_app(settings, loader=fake_loader(FakeEngine())), client=("10.0.0.1", 1)) as c:
        wait_ready(c)
        spoof = [c.post("/v1/accounts", headers={"x-forwarded-for": f"9.9.9.{i}, 198.51.100.1"}).status_code
                 for i in range(11)]
        other = c.post("/v1/accounts", headers={"x-forwarded-for": "198.51.100.2"}).status_code
    assert spoof == [201] * 10 + [429] and other == 201


# -- public_metrics --------------------------------------------------------------------------------

@pytest.fixture
def closed_app(tmp_path) -> Iterator[tuple[object, str, str]]:
    settings = Settings(data_dir=tmp_path, server_secret=SECRET, auth="required", public_metrics=False)
    migrations.upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    store = AccountStore(engine, keys.server_secret(settings))
    _, admin = store.create_account(key=KeySpec(scopes=frozenset({"admin"})))
    _, user = store.create_account()
    engine.dispose()
    yield create_app(settings, loader=fake_loader(FakeEngine())), admin.key, user.key


def test_closed_metrics_and_schema_need_an_admin_key_from_outside(closed_app):
    app, admin, user = closed_app
    with TestClient(app, client=("203.0.113.50", 1)) as c:
        wait_ready(c)
        for path in ("/metrics", "/openapi.json", "/docs"):
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers={"Authorization": f"Bearer {user}"}).status_code == 403, path
            assert c.get(path, headers={"Authorization": f"Bearer {admin}"}).status_code == 200, path
        assert c.get("/health").status_code == 200 and c.get("/v1/models").status_code == 200


def test_closed_metrics_are_open_to_a_loopback_client(closed_app):
    app, _, _ = closed_app
    with TestClient(app, client=("127.0.0.1", 1)) as c:
        wait_ready(c)
        assert c.get("/metrics").headers["content-type"].startswith("text/plain")
        assert c.get("/openapi.json").json()["paths"]


def test_metrics_are_public_by_default(tmp_path):
    with TestClient(create_app(Settings(data_dir=tmp_path), loader=fake_loader(FakeEngine()))) as c:
        wait_ready(c)
        assert c.get("/metrics").status_code == 200 and c.get("/docs").status_code == 200


# -- the SQLite file -------------------------------------------------------------------------------

def test_the_sqlite_database_and_its_wal_are_private(tmp_path):
    path = tmp_path / "new" / "gigarouter.db"
    os.umask(old := os.umask(0o022))              # whatever the umask, the file is 0600
    try:
        migrations.upgrade(f"sqlite:///{path}")
        engine = make_engine(f"sqlite:///{path}", pool_size=1)
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO accounts (id, balance_micro, disabled, created_at) "
                                 "VALUES ('acct_x', 0, false, CURRENT_TIMESTAMP)"))
            files = [p for p in path.parent.iterdir() if p.name.startswith("gigarouter.db")]
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
        engine.dispose()
    finally:
        os.umask(old)
    assert {"gigarouter.db", "gigarouter.db-wal", "gigarouter.db-shm"} <= set(modes)
    assert set(modes.values()) == {0o600}, modes
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_server_with_default_settings_creates_a_private_database(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", auth="required", server_secret=SECRET)
    with TestClient(create_app(settings, loader=fake_loader(FakeEngine()))) as c:
        wait_ready(c)
    assert stat.S_IMODE(Path(settings.default_sqlite_path).stat().st_mode) == 0o600
