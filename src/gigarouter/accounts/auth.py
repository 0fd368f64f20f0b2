"""Who is calling: an API key -> a Principal, or a refusal; and whether a server may run without keys.

Refusals never echo the key. A malformed, unknown or wrong key is 401
``invalid_api_key``; only a caller who holds the real key learns that it is
revoked or expired (still 401) or lacks a scope (403).
"""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import Engine, select, update

from gigarouter.accounts import keys
from gigarouter.accounts.db import transaction
from gigarouter.accounts.gate import Principal
from gigarouter.accounts.tables import Account, ApiKey, utcnow
from gigarouter.errors import Forbidden, Unauthorized
from gigarouter.settings import ConfigError, Settings

#: ``last_used_at`` is written at most this often per key (a write per request would serialise SQLite).
TOUCH_EVERY = timedelta(minutes=1)
_DUMMY_DIGEST = "0" * 64


def authenticate(engine: Engine, server_secret: bytes, authorization: str | None, *, scope: str) -> Principal:
    key = keys.from_authorization(authorization)
    if key is None:
        raise Unauthorized("missing API key: send it as 'Authorization: Bearer gr-...'")
    prefix = keys.parse(key)
    if prefix is None:
        raise Unauthorized("malformed API key")
    with transaction(engine, write=False) as conn:
        row = conn.execute(
            select(ApiKey.id, ApiKey.account_id, ApiKey.secret_hmac, ApiKey.scopes, ApiKey.expires_at,
                   ApiKey.revoked_at, ApiKey.last_used_at, ApiKey.rpm, ApiKey.tpm, Account.disabled)
            .join(Account, Account.id == ApiKey.account_id).where(ApiKey.prefix == prefix)
        ).one_or_none()
    # Verify even when the prefix is unknown, so both refusals cost the same time.
    if not keys.verify(server_secret, key, row.secret_hmac if row else _DUMMY_DIGEST) or row is None:
        raise Unauthorized("invalid API key")
    now = utcnow()
    _check_usable(row, now)
    scopes = keys.decode_scopes(row.scopes)
    if not keys.allows(scopes, scope):
        raise Forbidden(f"this API key does not have the {scope!r} scope")
    if row.last_used_at is None or now - row.last_used_at > TOUCH_EVERY:
        _touch(engine, row.id, now)
    return Principal(account_id=row.account_id, key_id=row.id, scopes=scopes, rpm=row.rpm, tpm=row.tpm)


def _check_usable(row, now: datetime) -> None:
    if row.revoked_at is not None:
        raise Unauthorized("this API key has been revoked")
    if row.expires_at is not None and row.expires_at <= now:
        raise Unauthorized(f"this API key expired at {row.expires_at.isoformat()}")
    if row.disabled:
        raise Forbidden("this account is disabled", code="account_disabled")


def _touch(engine: Engine, key_id: str, now: datetime) -> None:
    with transaction(engine) as conn:
        conn.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now))


# -- auth modes ------------------------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname other than localhost may resolve to anything


def decide_auth_mode(settings: Settings, has_keys: bool) -> Literal["open", "keys"]:
    """``open`` (no keys, nothing charged) or ``keys``; refuses an open server reachable from outside.

    auth="required": keys. auth="open": open. auth="auto": keys once any key
    exists, else open. An open server must be bound to loopback unless
    ``allow_open_non_loopback`` says the operator means it.
    """
    if settings.auth not in ("auto", "required", "open"):
        raise ConfigError(f"auth must be auto, required or open (got {settings.auth!r})")
    if settings.auth == "required" or (settings.auth == "auto" and has_keys):
        return "keys"
    if not is_loopback(settings.host) and not settings.allow_open_non_loopback:
        why = "auth is 'open'" if settings.auth == "open" else "no API keys exist yet"
        raise ConfigError(
            f"refusing to serve without API keys on {settings.host} ({why}): anyone who can reach it could use it. "
            "Create a key (`gigarouter accounts create`), require keys (auth = \"required\"), bind to "
            "127.0.0.1, or set allow_open_non_loopback = true if that is really what you want.")
    return "open"
