"""A server SIGKILLed mid-batch resumes after restart: no finished line redone, no line charged twice.

The server is a real subprocess (accounts on, SQLite and Postgres, the fake
engine logging every sequence it computes); it is killed with SIGKILL while
lines are in flight, started again on the same database and files, and the
batch runs to completion. Each line's input is three copies of a token id of
its own, so the compute logs say which lines each run computed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from gigarouter.accounts import ledger
from gigarouter.accounts.db import make_engine
from gigarouter.settings import Settings
from tests.accounts.conftest import SECRET
from tests.accounts.helpers import check_invariants, worker_env
from tests.accounts.test_http_money import account_with
from tests.batches.helpers import MODEL, PRICE, client_for, jsonl, lines_of, request_line, submit, wait_done
from tests.conftest import free_port, wait_until_ready

WORKER = Path(__file__).parent / "workers" / "batch_server.py"
LINES = 150
FIRST_ID = 2000                   # line i embeds [FIRST_ID + i] * 3
KILL_AFTER = 40                   # finished lines before the kill


@contextmanager
def server(settings: Settings, log: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(WORKER), settings.resolved_database_url, str(settings.data_dir),
                             SECRET, str(port), str(log)], env=worker_env(), stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, alive=lambda: proc.poll() is None)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def computed_lines(log: Path) -> list[int]:
    """The batch lines a run computed, from its engine's log ([CLS] x x x [SEP] with x = FIRST_ID + line)."""
    found = []
    for row in log.read_text().splitlines() if log.exists() else []:
        ids = [int(t) for t in row.split()]
        if len(ids) == 5 and ids[1] == ids[2] == ids[3] >= FIRST_ID:
            found.append(ids[1] - FIRST_ID)
    return found


def test_sigkill_mid_batch_resumes_without_redoing_or_double_charging(settings, tmp_path):
    account_id, key = account_with(settings, credit_micro=100_000_000)
    body = lambda i: {"model": MODEL, "input": [[FIRST_ID + i] * 3], "encoding_format": "float"}  # noqa: E731
    data = jsonl([request_line(f"line-{i}", body(i)) for i in range(LINES)])
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"

    with server(settings, first_log) as (base, proc):
        client = client_for(base, key)
        batch_id = submit(client, data).id
        deadline = time.monotonic() + 120
        while client.batches.retrieve(batch_id).request_counts.completed < KILL_AFTER:
            assert time.monotonic() < deadline and proc.poll() is None, "the batch did not get going"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    engine = make_engine(settings.resolved_database_url)
    with engine.connect() as conn:
        finished = set(conn.execute(sa.text("SELECT line FROM batch_lines WHERE batch_id = :b"),
                                    {"b": batch_id}).scalars())
        charged = conn.execute(sa.text("SELECT request_id FROM usage_records WHERE status = 200 AND request_id "
                                       "LIKE :p"), {"p": f"{batch_id}:%"}).scalars().all()
    assert KILL_AFTER <= len(finished) < LINES, "killed before or after the batch, not in the middle"
    charged_before = {int(r.rsplit(":", 1)[1]) for r in charged}
    assert finished <= charged_before

    with server(settings, second_log) as (base, _):
        client = client_for(base, key)
        batch = wait_done(client, batch_id)
        outputs = lines_of(client, batch.output_file_id)

    # Every line answered once, in order, with its own vector input.
    assert batch.status == "completed" and batch.error_file_id is None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (LINES, 0)
    assert [line["custom_id"] for line in outputs] == [f"line-{i}" for i in range(LINES)]
    # No finished line, and no line charged before the kill, was computed again after the restart.
    again = computed_lines(second_log)
    assert not set(again) & finished and not set(again) & charged_before
    assert set(computed_lines(first_log)) | set(again) == set(range(LINES))
    assert len(again) == len(set(again)) == LINES - len(charged_before)
    # Charged exactly once per line: one settled usage record each, at the discounted price.
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT request_id, tokens, cost_micro FROM usage_records WHERE status = 200 "
                                    "AND request_id LIKE :p"), {"p": f"{batch_id}:%"}).all()
        balance = conn.execute(sa.text("SELECT balance_micro FROM accounts WHERE id = :a"),
                               {"a": account_id}).scalar_one()
    assert sorted(r.request_id for r in rows) == sorted(f"{batch_id}:{i}" for i in range(LINES))
    per_line = ledger.cost_micro(5, ledger.price_micro_per_million(PRICE * (1 - settings.batch_discount)))
    assert all(r.tokens == 5 and r.cost_micro == per_line for r in rows)
    assert 100_000_000 - balance == LINES * per_line
    assert batch.model_extra["cost_usd"] == ledger.format_usd(LINES * per_line)
    check_invariants(engine)
    engine.dispose()
