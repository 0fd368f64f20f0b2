"""The accounts HTTP surface through a real ASGI app: sign-up, keys, usage, admin, scopes, errors."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import asynccontextmanager

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gigarouter.accounts.gate import OpenGate
from gigarouter.accounts.service import DatabaseGate
from gigarouter.accounts.store import KeySpec
from gigarouter.api.errors import install_error_handlers
from gigarouter.api.routes import accounts, admin, keys, usage

KEY = re.compile(r"^gr-[a-z0-9]{10}-[A-Za-z0-9]{40}$")


def build_app(gate) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if isinstance(gate, DatabaseGate):
            await gate.start()
        yield
        await gate.close()

    app = FastAPI(lifespan=lifespan)
    install_error_handlers(app)
    app.state.gate = gate
    for module in (accounts, keys, usage, admin):
        app.include_router(module.router)
    return app


@pytest.fixture
def client(settings) -> Iterator[TestClient]:
    with TestClient(build_app(DatabaseGate.from_settings(settings.with_(signup_credit_micro=2_500_000)))) as c:
        yield c


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_sign_up_gives_credit_and_a_key_once(client):
    response = client.post("/v1/accounts", json={"email": "Ada@Example.com"})
    assert response.status_code == 201
    body = response.json()
    assert body["email"] == "ada@example.com" and body["balance_micro"] == 2_500_000
    assert body["balance_usd"] == "2.500000"
    assert KEY.match(body["api_key"]["key"]) and body["api_key"]["scopes"] == ["embed", "keys:manage", "usage:read"]
    listed = client.get("/v1/keys", headers=bearer(body["api_key"]["key"])).json()["data"]
    assert [k["id"] for k in listed] == [body["api_key"]["id"]] and "key" not in listed[0]
    assert client.post("/v1/accounts", json={"email": "ada@example.com"}).status_code == 409
    assert client.post("/v1/accounts").status_code == 201                     # email is optional


def test_key_management(client):
    owner = client.post("/v1/accounts").json()["api_key"]["key"]
    created = client.post("/v1/keys", headers=bearer(owner), json={"name": "ci", "scopes": ["embed"], "rpm": 5})
    assert created.status_code == 201 and KEY.match(created.json()["key"]) and created.json()["rpm"] == 5
    new_id = created.json()["id"]
    assert client.post("/v1/keys", headers=bearer(owner), json={"scopes": ["admin"]}).status_code == 403
    assert client.post("/v1/keys", headers=bearer(owner), json={"scopes": ["root"]}).status_code == 400
    assert client.post("/v1/keys", headers=bearer(owner), json={"rpm": 0}).status_code == 400
    # The embed-only key cannot manage keys; a revoked key cannot do anything.
    assert client.get("/v1/keys", headers=bearer(created.json()["key"])).status_code == 403
    revoked = client.delete(f"/v1/keys/{new_id}", headers=bearer(owner))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert client.get("/v1/usage", headers=bearer(created.json()["key"])).status_code == 401
    assert client.delete("/v1/keys/key_nope", headers=bearer(owner)).status_code == 404


def test_errors_use_the_openai_shape(client):
    for headers in ({}, bearer("gr-malformed"), {"Authorization": "Basic x"}):
        response = client.get("/v1/usage", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
        assert response.json()["error"]["code"] == "invalid_api_key"


def test_usage_is_the_callers_own(client, settings):
    gate: DatabaseGate = client.app.state.gate
    mine = client.post("/v1/accounts").json()["api_key"]["key"]
    theirs = client.post("/v1/accounts").json()["api_key"]["key"]

    async def spend(key: str, model: str, tokens: int):
        principal = await gate.authenticate(f"Bearer {key}", scope="embed")
        charge = await gate.reserve(principal, model=model, tokens=tokens, price_per_million_usd=1.0,
                                    request_id="r")
        await gate.settle(charge, status=200, latency_ms=1.0)

    for key, model, tokens in ((mine, "a", 10), (mine, "b", 5), (mine, "b", 5), (theirs, "a", 1000)):
        client.portal.call(spend, key, model, tokens)
    by_model = client.get("/v1/usage?group_by=model", headers=bearer(mine)).json()
    assert [(d["group"], d["requests"], d["tokens"], d["cost_micro"]) for d in by_model["data"]] == [
        ("a", 1, 10, 10), ("b", 2, 10, 10)]
    assert by_model["balance_micro"] == 2_500_000 - 20
    by_day = client.get("/v1/usage", headers=bearer(mine)).json()["data"]
    assert len(by_day) == 1 and re.match(r"^\d{4}-\d{2}-\d{2}$", by_day[0]["group"])
    assert client.get("/v1/usage?start=2000-01-01&end=2000-01-02", headers=bearer(mine)).json()["data"] == []
    assert client.get("/v1/usage?start=yesterday", headers=bearer(mine)).status_code == 400
    by_provider = client.get("/v1/usage?group_by=provider", headers=bearer(mine)).json()
    assert by_provider["group_by"] == "provider"                # settled without a provider: one NULL group
    assert [(d["group"], d["requests"], d["cost_micro"]) for d in by_provider["data"]] == [(None, 3, 20)]
    assert client.get("/v1/usage?group_by=user", headers=bearer(mine)).status_code == 400


def test_admin_endpoints_need_the_admin_scope(client):
    gate: DatabaseGate = client.app.state.gate
    user = client.post("/v1/accounts").json()
    _, operator = client.portal.call(lambda: gate.create_account(key=KeySpec(scopes=frozenset({"admin"}))))
    grant = {"account_id": user["id"], "amount_usd": "1.5", "note": "welcome"}
    assert client.post("/v1/admin/credits", headers=bearer(user["api_key"]["key"]), json=grant).status_code == 403
    granted = client.post("/v1/admin/credits", headers=bearer(operator.key), json=grant)
    assert granted.status_code == 201 and granted.json()["balance_micro"] == 4_000_000
    too_fine = {**grant, "amount_usd": "0.0000001"}
    assert client.post("/v1/admin/credits", headers=bearer(operator.key), json=too_fine).status_code == 400
    listed = client.get("/v1/admin/accounts", headers=bearer(operator.key)).json()["data"]
    assert {a["id"] for a in listed} >= {user["id"]}
    assert client.get("/v1/admin/accounts", headers=bearer(user["api_key"]["key"])).status_code == 403


def test_sign_up_can_be_disabled_and_is_limited_per_client(settings):
    with TestClient(build_app(DatabaseGate.from_settings(settings.with_(signup_enabled=False)))) as c:
        assert c.post("/v1/accounts").status_code == 403
    with TestClient(build_app(DatabaseGate.from_settings(settings))) as c:
        statuses = [c.post("/v1/accounts").status_code for _ in range(11)]
    assert statuses == [201] * 10 + [429]


def test_open_mode_has_no_accounts():
    with TestClient(build_app(OpenGate())) as c:
        response = c.post("/v1/accounts")
    assert response.status_code == 404 and response.json()["error"]["code"] == "accounts_disabled"
