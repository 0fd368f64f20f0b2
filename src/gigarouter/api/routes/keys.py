"""API keys of the caller's account (scope ``keys:manage``): list, create (shown once), revoke."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from gigarouter.accounts.http import AccountsGate, KeyManager, key_json
from gigarouter.accounts.keys import DEFAULT_SCOPES, SCOPES
from gigarouter.accounts.ledger import MAX_BALANCE_MICRO
from gigarouter.accounts.store import MAX_RATE, KeySpec
from gigarouter.api.deps import JsonRoute

router = APIRouter(route_class=JsonRoute)


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, max_length=100, pattern=r"^[^\x00-\x1f\x7f]*$")
    scopes: list[Annotated[str, Field(max_length=20)]] | None = Field(
        default=None, max_length=len(SCOPES), description=f"any of {', '.join(SCOPES)}; default: "
                                                          f"{', '.join(sorted(DEFAULT_SCOPES))}")
    expires_at: AwareDatetime | None = None
    spend_cap_micro: int | None = Field(default=None, ge=0, le=MAX_BALANCE_MICRO)
    rpm: int | None = Field(default=None, ge=1, le=MAX_RATE)
    tpm: int | None = Field(default=None, ge=1, le=MAX_RATE)

    @field_validator("expires_at")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        try:   # 0001-01-01T00:00+05:00 has no UTC instant: a 400, not an OverflowError in the database layer
            return value.astimezone(UTC) if value is not None else None
        except OverflowError:
            raise ValueError("out of range") from None


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

