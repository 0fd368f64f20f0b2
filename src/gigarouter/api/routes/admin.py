"""Operator endpoints (scope ``admin``): grant credit, list accounts."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from gigarouter.accounts.http import AccountsGate, Admin, account_json, money
from gigarouter.accounts.ledger import MAX_AMOUNT_MICRO, check_amount, usd_to_micro
from gigarouter.accounts.store import MAX_OFFSET
from gigarouter.api.deps import JsonRoute
from gigarouter.errors import InvalidRequest

router = APIRouter(route_class=JsonRoute)
_USD_LIMIT = MAX_AMOUNT_MICRO // 1_000_000


class Grant(BaseModel):
    """Exactly one of amount_micro / amount_usd; negative takes credit back (never below zero)."""

    model_config = ConfigDict(extra="forbid")
    account_id: str = Field(max_length=40, pattern=r"^[^\x00]*$")
    amount_micro: int | None = Field(default=None, ge=-MAX_AMOUNT_MICRO, le=MAX_AMOUNT_MICRO,
                                     description="integer micro-dollars (1 USD = 1,000,000); not zero")
    amount_usd: Decimal | None = Field(default=None, ge=-_USD_LIMIT, le=_USD_LIMIT,
                                       description="USD, a whole number of micro-dollars; not zero")
    note: str | None = Field(default=None, max_length=500, pattern=r"^[^\x00]*$")

    def micro(self) -> int:
        if (self.amount_micro is None) == (self.amount_usd is None):
            raise InvalidRequest("give exactly one of amount_micro and amount_usd", param="amount_micro")
        if self.amount_micro is not None:
            return check_amount(self.amount_micro)
        try:
            return check_amount(usd_to_micro(self.amount_usd), param="amount_usd")
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="amount_usd") from None


@router.post("/v1/admin/credits", status_code=201)
async def grant_credit(body: Grant, gate: AccountsGate, caller: Admin) -> dict:
    amount = body.micro()
    balance = await gate.grant(body.account_id, amount, note=body.note or f"granted by key {caller.key_id}")
    return {"object": "credit_grant", "account_id": body.account_id, **money("amount", amount),
            **money("balance", balance)}


@router.get("/v1/admin/accounts")
async def list_accounts(gate: AccountsGate, caller: Admin, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> dict:
    accounts = await gate.list_accounts(limit=limit, offset=offset)
    return {"object": "list", "data": [account_json(a) for a in accounts], "limit": limit, "offset": offset}
