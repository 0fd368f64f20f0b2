"""The operator CLI: db upgrade, accounts create, keys create|list|revoke, credits grant."""

from __future__ import annotations

import asyncio
import re

import pytest
import typer
from typer.testing import CliRunner

from gigarouter.accounts import migrations
from gigarouter.accounts.cli import accounts_app, credits_app, db_app, keys_app
from gigarouter.accounts.db import is_sqlite
from gigarouter.errors import Unauthorized
from gigarouter.settings import Settings
from tests.accounts.helpers import started

app = typer.Typer()
for name, sub in (("accounts", accounts_app), ("keys", keys_app), ("credits", credits_app), ("db", db_app)):
    app.add_typer(sub, name=name)
KEY = re.compile(r"^gr-[a-z0-9]{10}-[A-Za-z0-9]{40}$")


@pytest.fixture
def cli(database_url, tmp_path):
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [*args, "--database-url", database_url, "--data-dir", str(tmp_path)],
                             env={"COLUMNS": "250"})

    return invoke


def test_db_upgrade_from_empty_and_again(cli, database_url):
    first = cli("db", "upgrade")
    assert first.exit_code == 0, first.output
    assert f"empty -> {migrations.head()}" in first.stderr
    again = cli("db", "upgrade")
    assert again.exit_code == 0 and "already at" in again.stderr
    assert cli("db", "current").stdout.startswith(migrations.head())


def test_sqlite_upgrades_itself_and_postgres_waits_for_the_operator(cli, database_url):
    result = cli("keys", "list")
    if is_sqlite(database_url):            # a laptop's database is created on first use
        assert result.exit_code == 0 and migrations.current(database_url) == migrations.head()
    else:                                  # production schema changes are a deliberate step
        assert result.exit_code == 1 and "gigarouter db upgrade" in result.stderr


def test_account_key_credit_revoke_round_trip(cli, database_url, tmp_path):
    assert cli("db", "upgrade").exit_code == 0
    created = cli("accounts", "create", "--email", "ops@example.com", "--credit", "5")
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert KEY.match(key)                                           # stdout holds the key and nothing else
    account_id = re.search(r"acct_[0-9a-f]{32}", created.stderr).group(0)
    assert "5.000000" in created.stderr

    second = cli("keys", "create", account_id, "--name", "ci", "--scope", "embed", "--rpm", "60",
                 "--spend-cap", "1.5")
    assert second.exit_code == 0 and KEY.match(second.stdout.strip())
    listed = cli("keys", "list", "--account", account_id)
    assert listed.exit_code == 0
    assert key.split("-")[1] in listed.stdout and key.split("-")[2] not in listed.stdout   # prefix yes, secret no

    granted = cli("credits", "grant", account_id, "1.25", "--note", "refund for outage")
    assert granted.exit_code == 0 and "6.250000" in granted.stderr
    assert cli("credits", "grant", account_id, "0.0000001").exit_code == 1

    key_id = re.search(r"key_[0-9a-f]{32}", created.stderr).group(0)
    assert cli("keys", "revoke", key_id).exit_code == 0
    settings = Settings(database_url=database_url, data_dir=tmp_path)

    async def refused():
        async with started(settings) as gate:
            with pytest.raises(Unauthorized):
                await gate.authenticate(f"Bearer {key}", scope="embed")
            assert (await gate.authenticate(f"Bearer {second.stdout.strip()}", scope="embed")).rpm == 60

    asyncio.run(refused())
    assert "revoked" in cli("keys", "list").stdout


def test_bad_input_is_a_clear_error(cli):
    assert cli("db", "upgrade").exit_code == 0
    result = cli("accounts", "create", "--scope", "root")
    assert result.exit_code == 1 and "unknown scope" in result.stderr
    assert cli("credits", "grant", "acct_missing", "1").exit_code == 1


def test_keys_made_with_the_servers_config_verify_on_that_server(database_url, tmp_path):
    """A server that sets server_secret hashes keys with it; the CLI must use the same file to make them."""
    config = tmp_path / "server.toml"
    config.write_text(f'database_url = "{database_url}"\ndata_dir = "{tmp_path / "srv"}"\n'
                      'server_secret = "the-servers-own-secret-0123456789"\n')
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade", "--config", str(config)]).exit_code == 0
    made = runner.invoke(app, ["accounts", "create", "--config", str(config), "--credit", "1"])
    assert made.exit_code == 0, made.output
    account_id = re.search(r"acct_[0-9a-f]{32}", made.stderr).group(0)
    second = runner.invoke(app, ["keys", "create", account_id, "--config", str(config), "--name", "ci"])
    assert second.exit_code == 0, second.output
    # Without --config the CLI falls back to a generated secret in its data dir: that key is refused.
    stray = runner.invoke(app, ["keys", "create", account_id, "--database-url", database_url,
                                "--data-dir", str(tmp_path / "elsewhere")])
    assert stray.exit_code == 0, stray.output

    async def server_side():
        from gigarouter.settings import load_settings

        async with started(load_settings(config)) as gate:
            for key in (made.stdout.strip(), second.stdout.strip()):
                assert (await gate.authenticate(f"Bearer {key}", scope="embed")).account_id == account_id
            with pytest.raises(Unauthorized):
                await gate.authenticate(f"Bearer {stray.stdout.strip()}", scope="embed")

    asyncio.run(server_side())


def test_config_errors_and_odd_values_are_clear_errors(cli, tmp_path):
    assert cli("db", "upgrade").exit_code == 0
    missing = cli("accounts", "list", "--config", str(tmp_path / "nope.toml"))
    assert missing.exit_code == 1 and "not found" in missing.stderr
    account_id = re.search(r"acct_[0-9a-f]{32}", cli("accounts", "create", "--no-key").stderr).group(0)
    for args in (["--expires-in-days", "1e10"], ["--expires-in-days", "-1"], ["--tpm", str(2**31)],
                 ["--spend-cap", "1e999999999"], ["--rpm", "0"]):
        result = cli("keys", "create", account_id, *args)
        assert result.exit_code != 0 and not isinstance(result.exception, (OverflowError, OSError)), args
    assert cli("credits", "grant", account_id, "1e30").exit_code == 1
