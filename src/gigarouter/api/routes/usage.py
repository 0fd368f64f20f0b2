"""GET /v1/usage: the caller's own usage, grouped by key, model, day or provider (scope ``usage:read``)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter

from gigarouter.accounts.http import AccountsGate, UsageReader, money, parse_time, usage_json

router = APIRouter()


@router.get("/v1/usage")
async def usage(gate: AccountsGate, caller: UsageReader,
                group_by: Literal["key", "model", "day", "provider"] = "day",
                start: str | None = None, end: str | None = None) -> dict:
    """Half-open window [start, end): ISO dates (UTC midnight) or datetimes."""
    since, until = parse_time(start, param="start"), parse_time(end, param="end")
    rows = await gate.usage(caller, group_by=group_by, start=since, end=until)
    account = await gate.get_account(caller.account_id)
    return {"object": "list", "group_by": group_by, "start": start, "end": end, "account_id": account.id,
            **money("balance", account.balance_micro), "data": [usage_json(r) for r in rows]}
