"""API keys of the caller's account (scope ``keys:manage``): list, create (shown once), revoke."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from gigarouter.accounts.http import AccountsGate, KeyManager, key_json
from gigarouter.accounts.store import KeySpec

router = APIRouter()


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, max_length=100)
    scopes: list[str] | None = None          # default: embed, usage:read, keys:manage
    expires_at: AwareDatetime | None = None
    spend_cap_micro: int | None = Field(default=None, ge=0)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)


@router.get("/v1/keys")
async def list_keys(gate: AccountsGate, caller: KeyManager) -> dict:
    return {"object": "list", "data": [key_json(k) for k in await gate.list_keys(caller)]}


@router.post("/v1/keys", status_code=201)
async def create_key(body: NewKey, gate: AccountsGate, caller: KeyManager) -> dict:
    spec = KeySpec(name=body.name, scopes=frozenset(body.scopes) if body.scopes is not None else None,
                   expires_at=body.expires_at, spend_cap_micro=body.spend_cap_micro, rpm=body.rpm, tpm=body.tpm)
    created = await gate.create_key(caller, spec)
    return key_json(created.info, secret=created.key)


@router.delete("/v1/keys/{key_id}")
async def revoke_key(key_id: str, gate: AccountsGate, caller: KeyManager) -> dict:
    return key_json(await gate.revoke_key(caller, key_id))

