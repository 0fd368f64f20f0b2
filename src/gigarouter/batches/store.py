"""Batch state in the database: files, batches and finished lines (blocking calls; run them off the loop).

Every query that a client's request makes is scoped to the caller's account
(``account_id`` None is open mode's nobody), so another account's file or
batch is a 404, never a 403 that would confirm it exists.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from gigarouter.accounts.db import is_sqlite, transaction
from gigarouter.accounts.tables import Account, IdempotencyRecord, UsageRecord, utcnow
from gigarouter.batches.tables import ACTIVE, batch_files, batch_lines, batches
from gigarouter.errors import Conflict, InvalidRequest, NotFound, RateLimited

COMPLETION_WINDOWS = {"24h": timedelta(hours=24)}
ENDPOINTS = ("/v1/embeddings",)
#: How long a client is told to wait when its queued work is at the limit.
_QUEUE_RETRY_AFTER_S = 60.0


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


def _owned(column, account_id: str | None):
    return column.is_(None) if account_id is None else column == account_id


@dataclass(frozen=True)
class LineRecord:
    """A finished line as the runner records it."""

    line: int
    ok: bool
    tokens: int
    cost_micro: int
    spool_offset: int
    spool_length: int


class BatchStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- files -------------------------------------------------------------------------------

    def add_file(self, *, file_id: str, account_id: str | None, purpose: str, filename: str, size: int,
                 lines: int, path: str) -> dict[str, Any]:
        row = dict(id=file_id, account_id=account_id, purpose=purpose, filename=filename, bytes=size, lines=lines,
                   path=path, created_at=utcnow())
        with transaction(self.engine) as conn:
            conn.execute(insert(batch_files).values(**row))
        return row

    def file(self, account_id: str | None, file_id: str) -> dict[str, Any]:
        return self._owned_row(batch_files, file_id, account_id, what="file")

    def delete_file(self, account_id: str | None, file_id: str) -> dict[str, Any]:
        """Forget a file; its path is returned for the caller to remove. The input of an unfinished batch stays."""
        with transaction(self.engine) as conn:
            row = conn.execute(select(batch_files).where(
                batch_files.c.id == file_id, _owned(batch_files.c.account_id, account_id))).mappings().one_or_none()
            if row is None:
                raise NotFound(f"no file with id {file_id!r}", param="file_id", code="file_not_found")
            running = conn.execute(select(batches.c.id).where(
                batches.c.input_file_id == file_id, batches.c.status.in_(ACTIVE)).limit(1)).scalar_one_or_none()
            if running is not None:
                raise Conflict(f"file {file_id} is the input of batch {running}, which has not finished; cancel "
                               "it or wait for it first", param="file_id", code="file_in_use")
            conn.execute(batch_files.delete().where(batch_files.c.id == file_id))
        return dict(row)

    # -- batches -----------------------------------------------------------------------------

    def create_batch(self, *, account_id: str | None, key_id: str | None, input_file_id: str, endpoint: str,
                     completion_window: str, metadata: dict[str, str] | None, max_queued: int) -> dict[str, Any]:
        """A new batch over one of the caller's input files, or 400 / 404 / 429 (queued lines past the limit)."""
        if endpoint not in ENDPOINTS:
            raise InvalidRequest(f"endpoint must be one of {', '.join(ENDPOINTS)}; this server embeds only",
                                 param="endpoint", code="invalid_endpoint")
        if completion_window not in COMPLETION_WINDOWS:
            raise InvalidRequest(f"completion_window must be one of {', '.join(COMPLETION_WINDOWS)}",
                                 param="completion_window", code="invalid_completion_window")
        now = utcnow()
        with transaction(self.engine) as conn:
            if account_id is not None and not is_sqlite(self.engine):
                # One account's batch creations queue here, so two at once cannot both pass the limit
                # (SQLite's write transactions are serial already).
                conn.execute(select(Account.id).where(Account.id == account_id).with_for_update())
            source = conn.execute(select(batch_files).where(
                batch_files.c.id == input_file_id,
                _owned(batch_files.c.account_id, account_id))).mappings().one_or_none()
            if source is None:
                raise NotFound(f"no file with id {input_file_id!r}", param="input_file_id", code="file_not_found")
            if source["purpose"] != "batch":
                raise InvalidRequest(f"file {input_file_id} has purpose {source['purpose']!r}; a batch's input "
                                     "needs purpose 'batch'", param="input_file_id", code="invalid_file")
            queued = conn.execute(select(func.coalesce(
                func.sum(batches.c.total - batches.c.completed - batches.c.failed), 0)).where(
                _owned(batches.c.account_id, account_id), batches.c.status.in_(ACTIVE))).scalar_one()
            if queued + source["lines"] > max_queued:
                raise RateLimited(f"this account has {queued} requests waiting in unfinished batches; with "
                                  f"{source['lines']} more it would pass the limit of {max_queued} "
                                  "(batch_max_queued_per_account)", retry_after=_QUEUE_RETRY_AFTER_S,
                                  code="batch_queue_full")
            row = dict(id=new_batch_id(), account_id=account_id, key_id=key_id, input_file_id=input_file_id,
                       endpoint=endpoint, completion_window=completion_window, status="validating",
                       metadata_json=json.dumps(metadata) if metadata is not None else None,
                       total=source["lines"], completed=0, failed=0, tokens=0, cost_micro=0, created_at=now,
                       expires_at=now + COMPLETION_WINDOWS[completion_window])
            conn.execute(insert(batches).values(**row))
        return self.batch(account_id, row["id"])

    def batch(self, account_id: str | None, batch_id: str) -> dict[str, Any]:
        return self._owned_row(batches, batch_id, account_id, what="batch")

    def _owned_row(self, table, row_id: str, account_id: str | None, *, what: str) -> dict[str, Any]:
        """One row of ``table`` by id, if the account owns it; another account's is a 404 like a missing one."""
        with transaction(self.engine, write=False) as conn:
            row = conn.execute(select(table).where(
                table.c.id == row_id, _owned(table.c.account_id, account_id))).mappings().one_or_none()
        if row is None:
            raise NotFound(f"no {what} with id {row_id!r}", param=f"{what}_id", code=f"{what}_not_found")
        return dict(row)

    def list_batches(self, account_id: str | None, *, after: str | None, limit: int) -> tuple[list[dict], bool]:
        """Newest first, ``limit`` of them after the batch ``after`` (a cursor); and whether more follow."""
        conditions = [_owned(batches.c.account_id, account_id)]
        with transaction(self.engine, write=False) as conn:
            if after is not None:
                cursor = conn.execute(select(batches.c.created_at, batches.c.id).where(
                    batches.c.id == after, _owned(batches.c.account_id, account_id))).one_or_none()
                if cursor is None:
                    raise NotFound(f"no batch with id {after!r}", param="after", code="batch_not_found")
                conditions.append((batches.c.created_at < cursor.created_at) | and_(
                    batches.c.created_at == cursor.created_at, batches.c.id < cursor.id))
            rows = conn.execute(select(batches).where(*conditions)
                                .order_by(batches.c.created_at.desc(), batches.c.id.desc())
                                .limit(limit + 1)).mappings().all()
        return [dict(r) for r in rows[:limit]], len(rows) > limit

    def cancel(self, account_id: str | None, batch_id: str) -> dict[str, Any]:
        """Ask a batch to stop: ``cancelling`` until its runner has finished the lines in flight."""
        with transaction(self.engine) as conn:
            conn.execute(update(batches).where(
                batches.c.id == batch_id, _owned(batches.c.account_id, account_id),
                batches.c.status.in_(("validating", "in_progress"))
            ).values(status="cancelling", cancelling_at=utcnow()))
        batch = self.batch(account_id, batch_id)
        if batch["status"] not in ("cancelling", "cancelled"):
            raise Conflict(f"batch {batch_id} is {batch['status']} and can no longer be cancelled",
                           param="batch_id", code="batch_not_cancellable")
        return batch

    # -- the runner's side -------------------------------------------------------------------

    def claim(self, owner: int, is_dead: Callable[[int], bool], *,
              exclude: frozenset[str] | set[str] = frozenset()) -> dict[str, Any] | None:
        """The oldest unfinished batch that no live process runs, now run by ``owner``; None when there is none.

        ``is_dead(runner)`` decides whether another process's batch may be taken over
        (its liveness lock, as accounts recovery uses).
        """
        with transaction(self.engine, write=False) as conn:
            candidates = conn.execute(select(batches.c.id, batches.c.runner).where(batches.c.status.in_(ACTIVE))
                                      .order_by(batches.c.created_at, batches.c.id)).all()
        for batch_id, runner in candidates:
            if batch_id in exclude:
                continue
            if runner is not None and runner != owner and not is_dead(runner):
                continue
            with transaction(self.engine) as conn:
                taken = conn.execute(update(batches).where(
                    batches.c.id == batch_id, batches.c.status.in_(ACTIVE),
                    batches.c.runner.is_(None) if runner is None else batches.c.runner == runner,
                ).values(runner=owner)).rowcount
            if taken:
                return self.running(batch_id)
        return None

    def running(self, batch_id: str) -> dict[str, Any]:
        with transaction(self.engine, write=False) as conn:
            row = conn.execute(select(batches).where(batches.c.id == batch_id)).mappings().one()
        return dict(row)

    def input_path(self, file_id: str) -> str:
        with transaction(self.engine, write=False) as conn:
            return conn.execute(select(batch_files.c.path).where(batch_files.c.id == file_id)).scalar_one()

    def start(self, batch_id: str) -> None:
        with transaction(self.engine) as conn:
            conn.execute(update(batches).where(batches.c.id == batch_id, batches.c.status == "validating")
                         .values(status="in_progress", in_progress_at=utcnow()))

    def finished_lines(self, batch_id: str) -> set[int]:
        with transaction(self.engine, write=False) as conn:
            return set(conn.execute(select(batch_lines.c.line).where(batch_lines.c.batch_id == batch_id)).scalars())

    def record_line(self, batch_id: str, record: LineRecord, *, claim: tuple[str, str] | None = None) -> bool:
        """The line and its batch's counts, in one transaction; False if it was recorded already.

        ``claim`` (account, Idempotency-Key) is the line's charge record, which kept its
        response until now: the line's own row takes over, so the claim goes in the same transaction.
        """
        counter = batches.c.completed if record.ok else batches.c.failed
        try:
            with transaction(self.engine) as conn:
                conn.execute(insert(batch_lines).values(batch_id=batch_id, **record.__dict__))
                if claim is not None:
                    conn.execute(delete(IdempotencyRecord).where(IdempotencyRecord.account_id == claim[0],
                                                                 IdempotencyRecord.key == claim[1],
                                                                 IdempotencyRecord.state == "done"))
                conn.execute(update(batches).where(batches.c.id == batch_id).values(
                    {counter: counter + 1, batches.c.tokens: batches.c.tokens + record.tokens,
                     batches.c.cost_micro: batches.c.cost_micro + record.cost_micro}))
        except IntegrityError:
            return False
        return True

    def status(self, batch_id: str) -> str:
        with transaction(self.engine, write=False) as conn:
            return conn.execute(select(batches.c.status).where(batches.c.id == batch_id)).scalar_one()

    def segments(self, batch_id: str, *, ok: bool) -> list[tuple[int, int]]:
        """Where the output (ok) or error lines lie in the spool, in input order."""
        with transaction(self.engine, write=False) as conn:
            return [tuple(r) for r in conn.execute(
                select(batch_lines.c.spool_offset, batch_lines.c.spool_length)
                .where(batch_lines.c.batch_id == batch_id, batch_lines.c.ok == ok).order_by(batch_lines.c.line))]

    def mark_finalizing(self, batch_id: str) -> None:
        with transaction(self.engine) as conn:
            conn.execute(update(batches).where(batches.c.id == batch_id, batches.c.status == "in_progress")
                         .values(status="finalizing", finalizing_at=utcnow()))

    def finish(self, batch_id: str, *, status: str, files: list[dict[str, Any]], output_file_id: str | None,
               error_file_id: str | None) -> None:
        """The end state and the output files, together: a batch is never completed without its files."""
        now = utcnow()
        stamp = {"completed": "completed_at", "cancelled": "cancelled_at", "expired": "expired_at",
                 "failed": "failed_at"}[status]
        with transaction(self.engine) as conn:
            for row in files:
                conn.execute(insert(batch_files).values(**row, created_at=now))
            conn.execute(update(batches).where(batches.c.id == batch_id).values(
                {"status": status, stamp: now, "output_file_id": output_file_id, "error_file_id": error_file_id,
                 "runner": None}))

    def fail(self, batch_id: str, *, code: str, message: str) -> None:
        """The batch cannot go on (its input is gone): ``failed``, with the reason in ``errors``."""
        with transaction(self.engine) as conn:
            conn.execute(update(batches).where(batches.c.id == batch_id).values(
                status="failed", failed_at=utcnow(), runner=None,
                errors_json=json.dumps([{"code": code, "message": message, "param": None, "line": None}])))

    def charged(self, account_id: str, request_id: str) -> tuple[int, int]:
        """(tokens, cost) of the settled request ``request_id``: a line charged before a crash."""
        with transaction(self.engine, write=False) as conn:
            row = conn.execute(select(UsageRecord.tokens, UsageRecord.cost_micro).where(
                UsageRecord.account_id == account_id, UsageRecord.request_id == request_id,
                UsageRecord.status == 200)).first()
        return (row.tokens, row.cost_micro) if row is not None else (0, 0)

    def release(self, owner: int) -> None:
        """A stopping runner lets go of its batches, so another process may take them at once."""
        with transaction(self.engine) as conn:
            conn.execute(update(batches).where(batches.c.runner == owner).values(runner=None))


def batch_metadata(row: dict[str, Any]) -> dict[str, str] | None:
    return json.loads(row["metadata_json"]) if row["metadata_json"] else None


def epoch(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None
