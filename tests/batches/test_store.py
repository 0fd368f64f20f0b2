"""The batch tables and their store on SQLite and Postgres: the migration matches the tables, a line is
recorded once, a batch is taken over only from a dead runner, and the queue limit counts unfinished work."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from gigarouter.accounts import migrations
from gigarouter.accounts.db import make_engine, transaction
from gigarouter.batches.store import BatchStore, LineRecord, new_file_id
from gigarouter.batches.tables import metadata
from gigarouter.errors import RateLimited


@pytest.fixture
def store(migrated_url):
    engine = make_engine(migrated_url)
    yield BatchStore(engine)
    engine.dispose()


def _batch(store: BatchStore, lines: int = 3, max_queued: int = 100) -> dict:
    file_id = new_file_id()
    store.add_file(file_id=file_id, account_id=None, purpose="batch", filename="f.jsonl", size=10, lines=lines,
                   path=f"{file_id}.jsonl")
    return store.create_batch(account_id=None, key_id=None, input_file_id=file_id, endpoint="/v1/embeddings",
                              completion_window="24h", metadata=None, max_queued=max_queued)


def test_the_migration_makes_exactly_the_tables_and_goes_back(migrated_url):
    engine = make_engine(migrated_url)
    ours = set(metadata.tables)

    def include_name(name, type_, parents):
        return (name if type_ == "table" else parents.get("table_name")) in ours | {None}

    with transaction(engine, write=False) as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "include_name": include_name})
        assert compare_metadata(context, metadata) == []
    migrations.downgrade(migrated_url, "0004")
    with engine.connect() as conn:
        assert not ours & set(sa.inspect(conn).get_table_names())
    engine.dispose()
    migrations.upgrade(migrated_url)
    assert migrations.current(migrated_url) == migrations.head()


def test_a_line_is_recorded_once_with_its_counts(store):
    batch = _batch(store)
    record = LineRecord(line=0, ok=True, tokens=5, cost_micro=7, spool_offset=0, spool_length=10)
    assert store.record_line(batch["id"], record)
    assert not store.record_line(batch["id"], record)                 # again (a resumed runner): nothing moves
    assert store.record_line(batch["id"], LineRecord(line=1, ok=False, tokens=0, cost_micro=0, spool_offset=10,
                                                     spool_length=4))
    row = store.running(batch["id"])
    assert (row["completed"], row["failed"], row["tokens"], row["cost_micro"]) == (1, 1, 5, 7)
    assert store.finished_lines(batch["id"]) == {0, 1}
    assert store.segments(batch["id"], ok=True) == [(0, 10)] and store.segments(batch["id"], ok=False) == [(10, 4)]


def test_a_batch_is_taken_over_only_from_a_dead_runner(store):
    batch = _batch(store)
    assert store.claim(1, lambda owner: False)["runner"] == 1
    assert store.claim(2, lambda owner: False) is None                 # runner 1 lives
    assert store.claim(1, lambda owner: False, exclude={batch["id"]}) is None
    assert store.claim(2, lambda owner: owner == 1)["runner"] == 2      # runner 1 died
    store.release(2)
    assert store.running(batch["id"])["runner"] is None


def test_the_queue_limit_counts_unfinished_lines(store):
    first = _batch(store, lines=3, max_queued=5)
    with pytest.raises(RateLimited):
        _batch(store, lines=4, max_queued=5)                         # 3 waiting + 4 > 5
    store.record_line(first["id"], LineRecord(line=0, ok=True, tokens=1, cost_micro=0, spool_offset=0,
                                              spool_length=1))
    store.record_line(first["id"], LineRecord(line=1, ok=False, tokens=0, cost_micro=0, spool_offset=1,
                                              spool_length=1))
    assert _batch(store, lines=4, max_queued=5)["status"] == "validating"   # 1 waiting + 4 <= 5


def test_a_batch_whose_input_is_gone_fails_with_the_reason(store):
    from gigarouter.batches.jobs import batch_json

    batch = _batch(store)
    store.fail(batch["id"], code="file_missing", message="gone")
    shown = batch_json(store.running(batch["id"]))
    assert shown["status"] == "failed" and shown["failed_at"] is not None
    assert shown["errors"] == {"object": "list", "data": [{"code": "file_missing", "message": "gone", "param": None,
                                                           "line": None}]}
    assert store.claim(1, lambda owner: True) is None                  # nothing left to run
