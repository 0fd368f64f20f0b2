"""POST /v1/accounts: sign up (an account, its free credit, and its first API key, shown once)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from gigarouter.accounts.http import AccountsGate, account_json, key_json
from gigarouter.api.deps import JsonRoute

router = APIRouter(route_class=JsonRoute)


class SignUp(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str | None = None


@router.post("/v1/accounts", status_code=201)
async def sign_up(request: Request, gate: AccountsGate, body: SignUp | None = None) -> dict:
    client = request.client.host if request.client else None
    account, key = await gate.sign_up(email=body.email if body else None, client=client)
    return {**account_json(account), "api_key": key_json(key.info, secret=key.key)}
