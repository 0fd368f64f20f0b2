"""Alembic environment: runs on the connection that ``gigarouter.accounts.migrations.upgrade`` opened.

The caller holds the transaction (and, on Postgres, an advisory lock), so two
gateways starting together cannot migrate the same database twice.
"""

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with gigarouter.accounts.migrations.upgrade(database_url)")

context.configure(connection=connection, target_metadata=None, transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
