"""The web tests' server: the real app on the embedded model, with accounts on a temp SQLite database.

One uvicorn server per session, in a background thread on a free loopback
port, so the browser tests and the HTTP tests share one model load. The
DatabaseGate is passed to ``create_app(settings, gate=...)`` and started
before the app's own lifespan (migrations, liveness lock, recovery).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from gigarouter.accounts.limits import Limit
from gigarouter.accounts.service import DatabaseGate, GateOptions
from gigarouter.api.app import create_app
from gigarouter.settings import Settings

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
PASSWORD = "correct horse battery staple"
#: The operator: a web user whose account holds an admin-scoped key; signed up by the first test needing it.
ADMIN_EMAIL = f"admin-{os.getpid()}@example.com"


@dataclass
class LiveServer:
    base_url: str
    app: FastAPI
    gate: DatabaseGate
    settings: Settings

    def url(self, path: str) -> str:
        return self.base_url + path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    port = free_port()
    settings = Settings(port=port, data_dir=tmp_path_factory.mktemp("gigarouter-web"),
                        batch_token_budget=1024, server_secret="web-tests-server-secret")
    # Every test signs up and in from 127.0.0.1: lift the per-address limits for the session (run
    # alone, within 5 minutes, tests/web signs in more than 10 times; the limits have tests of their own).
    gate = DatabaseGate.from_settings(settings, options=GateOptions(
        signup_limit=Limit(requests=10_000), signin_limit=Limit(requests=10_000, period_s=300.0)))
    app = create_app(settings, gate=gate)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="web-test-server", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise AssertionError("the web test server did not become ready")
        time.sleep(0.05)
    try:
        yield LiveServer(base_url=base, app=app, gate=gate, settings=settings)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def client(live: LiveServer) -> Iterator[httpx.Client]:
    """A cookie-keeping HTTP client, like a browser without JS."""
    with httpx.Client(base_url=live.base_url, timeout=30, follow_redirects=False) as c:
        yield c


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


_emails = iter(range(1, 1_000_000))


def new_email(tag: str = "user") -> str:
    return f"{tag}{next(_emails)}-{os.getpid()}@example.com"


def sign_up(client: httpx.Client, email: str | None = None, password: str = PASSWORD) -> tuple[str, str]:
    """Sign up through the HTML form; returns (email, the API key the page showed once).

    The form's POST redirects (303) to /signup/done, which shows the key once.
    """
    email = email or new_email()
    token = csrf_of(client.get("/signup").text)
    posted = client.post("/signup", data={"email": email, "password": password, "csrf_token": token})
    assert posted.status_code == 303 and posted.headers["location"] == "/signup/done", posted.text
    page = client.get("/signup/done")
    assert page.status_code == 200, page.text
    key = re.search(r'<code id="api-key">(gr-[a-z0-9]+-[A-Za-z0-9]+)</code>', page.text)
    assert key, "the sign-up page did not show the key"
    return email, key.group(1)


def sign_in_as_admin(client: httpx.Client, live: LiveServer) -> None:
    """Sign the client in as the operator: the first time, sign up and give the account an admin-scoped key,
    as `gigarouter keys create ACCOUNT --scope admin` does."""
    from gigarouter.accounts.store import KeySpec
    from gigarouter.web.users import WebStore

    token = csrf_of(client.get("/signin").text)
    signed = client.post("/signin", data={"email": ADMIN_EMAIL, "password": PASSWORD, "csrf_token": token})
    if signed.status_code != 303:
        sign_up(client, ADMIN_EMAIL)
        account = WebStore(live.gate.engine).user_by_email(ADMIN_EMAIL).account_id
        live.gate.store.create_key(account, KeySpec(name="operator", scopes=frozenset({"admin"})))


# -- the browser -----------------------------------------------------------------------------------

def _chromium_or_skip() -> str:
    if shutil.which(CHROMIUM) or Path(CHROMIUM).exists():
        return CHROMIUM
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing: CI must `apt-get install -y chromium`")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")


@pytest.fixture(scope="session")
def browser():
    executable = _chromium_or_skip()
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, live: LiveServer):
    """A fresh browser context (no cookies) at desktop width."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live.base_url)
    context.set_default_timeout(15_000)
    page = context.new_page()
    problems: list[str] = []   # script errors and CSP violations show up on the console
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    try:
        yield page
    finally:
        context.close()
    assert not problems, f"the browser console reported errors: {problems}"
