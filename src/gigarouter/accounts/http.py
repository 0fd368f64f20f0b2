"""FastAPI glue for the accounts routes: the gate dependency, scope checks, and JSON shapes.

The app stores a ``DatabaseGate`` in ``app.state.gate`` when accounts are on;
in open mode there is no account to manage and these routes answer 404.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, time
from typing import Annotated, Any

from fastapi import Depends, Request

from gigarouter.accounts import keys
from gigarouter.accounts.gate import Principal
from gigarouter.accounts.ledger import format_usd
from gigarouter.accounts.service import DatabaseGate
from gigarouter.accounts.store import AccountInfo, KeyInfo, UsageRow
from gigarouter.errors import InvalidRequest, NotFound


def get_accounts_gate(request: Request) -> DatabaseGate:
    gate = getattr(request.app.state, "gate", None)
    if not isinstance(gate, DatabaseGate):
        raise NotFound("accounts are not enabled on this server (it runs without API keys)",
                       code="accounts_disabled")
    return gate


def require_scope(scope: str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: the caller's key must carry ``scope``; the call counts against its request limit."""

    async def principal(request: Request) -> Principal:
        gate = get_accounts_gate(request)
        caller = await gate.authenticate(request.headers.get("authorization"), scope=scope)
        await gate.check_rate(caller, tokens=0)
        return caller

    principal.__name__ = f"require_{scope.replace(':', '_')}"
    return principal


AccountsGate = Annotated[DatabaseGate, Depends(get_accounts_gate)]
UsageReader = Annotated[Principal, Depends(require_scope("usage:read"))]
KeyManager = Annotated[Principal, Depends(require_scope("keys:manage"))]
Admin = Annotated[Principal, Depends(require_scope("admin"))]


def money(prefix: str, micro: int) -> dict[str, Any]:
    """Both forms of an amount: exact integer micro-dollars and a decimal USD string."""
    return {f"{prefix}_micro": micro, f"{prefix}_usd": format_usd(micro)}


def _ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def account_json(account: AccountInfo) -> dict[str, Any]:
    return {"object": "account", "id": account.id, "email": account.email, **money("balance", account.balance_micro),
            "disabled": account.disabled, "created_at": _ts(account.created_at)}


def key_json(info: KeyInfo, *, secret: str | None = None) -> dict[str, Any]:
    body = {"object": "api_key", "id": info.id, "account_id": info.account_id, "name": info.name,
            "display": keys.display(info.prefix), "prefix": info.prefix, "scopes": sorted(info.scopes),
            "created_at": _ts(info.created_at), "expires_at": _ts(info.expires_at),
            "revoked_at": _ts(info.revoked_at), "last_used_at": _ts(info.last_used_at),
            "spend_cap_micro": info.spend_cap_micro, **money("spent", info.spent_micro),
            "rpm": info.rpm, "tpm": info.tpm}
    if secret is not None:
        body["key"] = secret  # the only time the whole key is ever sent
    return body


def usage_json(row: UsageRow) -> dict[str, Any]:
    return {"group": row.group, "requests": row.requests, "failed_requests": row.failed, "tokens": row.tokens,
            "cached_tokens": row.cached_tokens, **money("cost", row.cost_micro)}


def parse_time(value: str | None, *, param: str) -> datetime | None:
    """An ISO date (midnight UTC) or datetime (UTC unless it says otherwise)."""
    if value is None or value == "":
        return None
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), time(), tzinfo=UTC)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        # In UTC here, where 0001-01-01T00:00+01:00 or 9999-12-31T23:59-01:00 (no UTC instant) is a 400.
        return parsed.astimezone(UTC) if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidRequest(f"{param} must be an ISO date or datetime, e.g. 2026-01-31", param=param) from None
