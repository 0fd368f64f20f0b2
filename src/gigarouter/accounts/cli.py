"""``gigarouter accounts|keys|credits|db``: operator commands on the accounts database.

Mounted by gigarouter.cli. Every command takes ``--config`` (the server's TOML
file: its database and ``server_secret``), ``--database-url`` and ``--data-dir``
(defaults from Settings: SQLite in the user's data directory).
A new key goes to stdout alone, once, so ``KEY=$(gigarouter keys create ...)``
works; everything else goes to stderr.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Column, Table

from gigarouter.accounts import keys, migrations
from gigarouter.accounts.db import is_sqlite, make_engine
from gigarouter.accounts.ledger import format_usd, usd_to_micro
from gigarouter.accounts.store import MAX_RATE, AccountStore, CreatedKey, KeyInfo, KeySpec
from gigarouter.accounts.tables import utcnow
from gigarouter.errors import GigarouterError
from gigarouter.settings import ConfigError, Settings, load_settings

accounts_app = typer.Typer(help="Create and list accounts.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
credits_app = typer.Typer(help="Grant credit.", no_args_is_help=True)
db_app = typer.Typer(help="Migrate the accounts database.", no_args_is_help=True)

err = Console(stderr=True)
MAX_EXPIRY_DAYS = 36_500      # a hundred years
out = Console(highlight=False, soft_wrap=True)

DatabaseUrl = Annotated[str | None, typer.Option("--database-url", help="SQLAlchemy URL; default: SQLite "
                                                    "file in the data directory. postgresql://... for Postgres.")]
DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Where the SQLite file and server secret live.")]
ConfigFile = Annotated[Path | None, typer.Option(
    "--config", "-c", help="The server's TOML file: its database_url, data_dir and server_secret are used "
    "(flags override them), so keys made here verify on that server.", dir_okay=False)]
Scopes = Annotated[list[str] | None, typer.Option("--scope", help=f"Repeatable: {', '.join(keys.SCOPES)}. "
                                                     "Default: embed, usage:read, keys:manage.")]


def _settings(database_url: str | None, data_dir: Path | None, config: Path | None = None) -> Settings:
    """The server's settings (``--config``), with ``--database-url``/``--data-dir`` on top.

    Without ``--config`` these are the defaults, including a generated server
    secret in the data directory: a key made that way does not verify on a server
    that sets ``server_secret`` in its file. Pass the same file the server uses.
    """
    return load_settings(config, database_url=database_url, data_dir=data_dir)


@contextmanager
def _store(database_url: str | None, data_dir: Path | None, config: Path | None = None) -> Iterator[AccountStore]:
    """The store on an up-to-date schema; errors become a red line and exit status 1."""
    try:
        settings = _settings(database_url, data_dir, config)
        url = settings.resolved_database_url
        migrations.ensure_current(url, migrate=is_sqlite(url))
        engine = make_engine(url, pool_size=1)
        try:
            yield AccountStore(engine, keys.server_secret(settings))
        finally:
            engine.dispose()
    except (GigarouterError, ConfigError, ValueError) as exc:
        err.print(f"[red]error:[/] {getattr(exc, 'message', exc)}")
        raise typer.Exit(1) from None


def _spec(name: str | None, scopes: list[str] | None, expires_in_days: float | None, spend_cap: str | None,
          rpm: int | None, tpm: int | None) -> KeySpec:
    expires_at = None
    if expires_in_days is not None:
        if not 0 < expires_in_days <= MAX_EXPIRY_DAYS:   # timedelta(days=1e10) or year 10000 would overflow
            raise ValueError(f"--expires-in-days must be more than 0 and at most {MAX_EXPIRY_DAYS}")
        expires_at = utcnow() + timedelta(days=expires_in_days)
    return KeySpec(name=name, scopes=keys.normalize_scopes(scopes) if scopes else None, expires_at=expires_at,
                   spend_cap_micro=usd_to_micro(spend_cap) if spend_cap is not None else None, rpm=rpm, tpm=tpm)


def _show_new_key(created: CreatedKey) -> None:
    err.print(f"[bold green]API key[/] {created.info.id} ({', '.join(sorted(created.info.scopes))}) "
              f"for {created.info.account_id}. [bold]It is shown once; store it now:[/]")
    out.print(created.key)


@accounts_app.command("create")
def accounts_create(
    email: Annotated[str | None, typer.Option(help="Contact email (optional, unique).")] = None,
    credit: Annotated[str | None, typer.Option(help="Opening credit in USD, e.g. 5 or 0.25; default: "
                                                  "the sign-up credit from settings.")] = None,
    name: Annotated[str, typer.Option(help="Name of the first key.")] = "default",
    scope: Scopes = None,
    no_key: Annotated[bool, typer.Option("--no-key", help="Create the account without a key.")] = False,
    database_url: DatabaseUrl = None, data_dir: DataDir = None, config: ConfigFile = None,
) -> None:
    """Create an account with its opening credit and first API key."""
    with _store(database_url, data_dir, config) as store:
        settings = _settings(database_url, data_dir, config)
        amount = usd_to_micro(credit) if credit is not None else settings.signup_credit_micro
        spec = None if no_key else _spec(name, scope, None, None, None, None)
        account, created = store.create_account(email=email, credit_micro=amount, key=spec, note="created by CLI")
    err.print(f"[bold green]account[/] {account.id} balance ${format_usd(account.balance_micro)}")
    if created is not None:
        _show_new_key(created)


@accounts_app.command("list")
def accounts_list(limit: Annotated[int, typer.Option(help="At most this many.")] = 100,
                  database_url: DatabaseUrl = None, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """List accounts with their balances."""
    with _store(database_url, data_dir, config) as store:
        accounts = store.list_accounts(limit=limit)
    table = Table(Column("id", no_wrap=True), "email", "balance (USD)", "created", "status")
    for a in accounts:
        table.add_row(a.id, a.email or "", format_usd(a.balance_micro), f"{a.created_at:%Y-%m-%d %H:%M}",
                      "disabled" if a.disabled else "active")
    out.print(table)


@keys_app.command("create")
def keys_create(
    account_id: Annotated[str, typer.Argument(help="The account the key belongs to.")],
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
    scope: Scopes = None,
    expires_in_days: Annotated[float | None, typer.Option(help="Expire after this many days.")] = None,
    spend_cap: Annotated[str | None, typer.Option(help="Most this key may ever spend, in USD.")] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.", min=1, max=MAX_RATE)] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.", min=1, max=MAX_RATE)] = None,
    database_url: DatabaseUrl = None, data_dir: DataDir = None, config: ConfigFile = None,
) -> None:
    """Create an API key; it is printed once, to stdout."""
    with _store(database_url, data_dir, config) as store:
        created = store.create_key(account_id, _spec(name, scope, expires_in_days, spend_cap, rpm, tpm))
    _show_new_key(created)


@keys_app.command("list")
def keys_list(account: Annotated[str | None, typer.Option(help="Only this account's keys.")] = None,
              database_url: DatabaseUrl = None, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """List keys (prefixes only; secrets are never stored)."""
    with _store(database_url, data_dir, config) as store:
        rows = store.list_keys(account)
    table = Table(Column("id", no_wrap=True), Column("key", no_wrap=True), Column("account", no_wrap=True),
                  "name", "scopes", "status", "spent (USD)", "rpm/tpm", "last used")
    for k in rows:
        table.add_row(k.id, k.display, k.account_id, k.name or "", " ".join(sorted(k.scopes)), _status(k),
                      format_usd(k.spent_micro), f"{k.rpm or '-'}/{k.tpm or '-'}",
                      f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "never")
    out.print(table)


def _status(key: KeyInfo) -> str:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= utcnow():
        return "expired"
    return "active" if key.expires_at is None else f"active until {key.expires_at:%Y-%m-%d}"


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (key_...).")],
                database_url: DatabaseUrl = None, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Revoke a key at once; requests with it get 401 from then on."""
    with _store(database_url, data_dir, config) as store:
        info = store.revoke_key(key_id)
    err.print(f"revoked {info.id} ({info.display})")


@credits_app.command("grant")
def credits_grant(
    account_id: Annotated[str, typer.Argument(help="The account to credit.")],
    amount: Annotated[str, typer.Argument(help="USD, e.g. 10 or 0.5; negative (after --) takes credit back.")],
    note: Annotated[str | None, typer.Option(help="Why (kept in the ledger).")] = None,
    database_url: DatabaseUrl = None, data_dir: DataDir = None, config: ConfigFile = None,
) -> None:
    """Add credit to an account (one ledger entry)."""
    with _store(database_url, data_dir, config) as store:
        balance = store.grant(account_id, usd_to_micro(amount), note=note or "granted by CLI")
    err.print(f"{account_id}: balance ${format_usd(balance)}")


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
               database_url: DatabaseUrl = None, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Create or migrate the accounts schema (safe to run on every deploy)."""
    try:
        url = _settings(database_url, data_dir, config).resolved_database_url
        before = migrations.current(url)
        migrations.upgrade(url, revision)
        after = migrations.current(url)
    except (ConfigError, ValueError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    err.print(f"accounts database: {before or 'empty'} -> {after}" if before != after
              else f"accounts database already at {after}")


@db_app.command("current")
def db_current(database_url: DatabaseUrl = None, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Print the schema revision (and the newest this version knows)."""
    try:
        url = _settings(database_url, data_dir, config).resolved_database_url
    except ConfigError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    out.print(f"{migrations.current(url) or 'empty'} (head: {migrations.head()})")
