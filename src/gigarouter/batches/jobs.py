"""``BatchJobs``: what the files and batches routes call, built in the app's lifespan; and the JSON they answer.

The database is the accounts database (the gate's own engine when accounts
are on). In open mode on a laptop that never made one, nothing is created
until the first file is uploaded: then the SQLite file is made and migrated,
and the runner starts.
"""

from __future__ import annotations

import asyncio
import json
import logging
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from gigarouter.accounts import migrations
from gigarouter.accounts.db import is_sqlite, make_engine
from gigarouter.accounts.gate import Gate, Principal
from gigarouter.accounts.ledger import format_usd
from gigarouter.batches.files import FileStore
from gigarouter.batches.lines import LineRunner
from gigarouter.batches.runner import BatchRunner
from gigarouter.batches.store import BatchStore, batch_metadata, epoch, new_file_id
from gigarouter.errors import InvalidRequest, NotReady
from gigarouter.metrics import Metrics
from gigarouter.router.router import Router
from gigarouter.settings import ConfigError, Settings

log = logging.getLogger(__name__)

PURPOSES = ("batch",)


class BatchJobs:
    def __init__(self, settings: Settings, *, router: Router, gate: Gate, metrics: Metrics) -> None:
        self.settings = settings
        self.files = FileStore(settings.resolved_batch_files_dir)
        self._lines = LineRunner(settings=settings, router=router, gate=gate, metrics=metrics)
        self._gate = gate
        self._gate_engine: Engine | None = getattr(gate, "engine", None)
        self._own_engine: Engine | None = None
        self._store: BatchStore | None = None
        self.runner: BatchRunner | None = None
        self._opening = asyncio.Lock()

    async def start(self) -> None:
        """Open the store and resume unfinished batches, unless there is no database yet (then: at first use)."""
        s = self.settings
        if self._gate_engine is not None or s.database_url is not None or s.default_sqlite_path.exists():
            try:
                await self._open()
            except NotReady as exc:       # a Postgres not yet upgraded: the rest of the server still serves
                log.error("%s", exc.message)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.stop()
            self.runner = None
        if self._own_engine is not None:
            self._own_engine.dispose()
            self._own_engine = None
        self._store = None

    async def _open(self) -> BatchStore:
        async with self._opening:
            if self._store is not None:
                return self._store
            engine = self._gate_engine
            if engine is None:
                url = self.settings.resolved_database_url
                try:
                    await run_in_threadpool(migrations.ensure_current, url, migrate=is_sqlite(url))
                except ConfigError as exc:
                    raise NotReady(f"batches are unavailable: {exc}", code="batches_unavailable") from None
                engine = self._own_engine = make_engine(url, pool_size=4)
            await run_in_threadpool(self.files.ensure)
            store = BatchStore(engine)
            self.runner = BatchRunner(store, self.files, self._lines, concurrency=self.settings.batch_concurrency,
                                      liveness=getattr(self._gate, "liveness", None))
            await self.runner.start()
            self._store = store
            return store

    async def _db(self, fn_name: str, *args: Any, **kwargs: Any) -> Any:
        store = self._store or await self._open()
        return await run_in_threadpool(partial(getattr(store, fn_name), *args, **kwargs))

    # -- files -------------------------------------------------------------------------------

    async def upload(self, principal: Principal, *, source: BinaryIO, filename: str, purpose: str) -> dict[str, Any]:
        if purpose not in PURPOSES:
            raise InvalidRequest(f"purpose must be one of {', '.join(PURPOSES)}: this server keeps files for "
                                 "batches only", param="purpose", code="invalid_purpose")
        if self._store is None:
            await self._open()          # the database first: no file is kept that it cannot record
        file_id = new_file_id()
        saved = await run_in_threadpool(partial(
            self.files.save_upload, source, name=f"{file_id}.jsonl", max_bytes=self.settings.batch_max_file_bytes,
            max_lines=self.settings.batch_max_lines))
        try:
            row = await self._db("add_file", file_id=file_id, account_id=principal.account_id, purpose=purpose,
                                 filename=filename[:255], size=saved.bytes, lines=saved.lines, path=saved.name)
        except BaseException:
            await run_in_threadpool(self.files.remove, saved.name)
            raise
        return file_json(row)

    async def file(self, principal: Principal, file_id: str) -> dict[str, Any]:
        return file_json(await self._db("file", principal.account_id, file_id))

    async def content(self, principal: Principal, file_id: str) -> Path:
        row = await self._db("file", principal.account_id, file_id)
        return self.files.path(row["path"])

    async def delete_file(self, principal: Principal, file_id: str) -> dict[str, Any]:
        row = await self._db("delete_file", principal.account_id, file_id)
        await run_in_threadpool(self.files.remove, row["path"])
        return {"id": row["id"], "object": "file", "deleted": True}

    # -- batches -----------------------------------------------------------------------------

    async def create(self, principal: Principal, *, input_file_id: str, endpoint: str, completion_window: str,
                     metadata: dict[str, str] | None) -> dict[str, Any]:
        row = await self._db("create_batch", account_id=principal.account_id, key_id=principal.key_id,
                             input_file_id=input_file_id, endpoint=endpoint, completion_window=completion_window,
                             metadata=metadata, max_queued=self.settings.batch_max_queued_per_account)
        if self.runner is not None:
            self.runner.wake()
        return batch_json(row)

    async def batch(self, principal: Principal, batch_id: str) -> dict[str, Any]:
        return batch_json(await self._db("batch", principal.account_id, batch_id))

    async def list(self, principal: Principal, *, after: str | None, limit: int) -> dict[str, Any]:
        rows, more = await self._db("list_batches", principal.account_id, after=after, limit=limit)
        data = [batch_json(r) for r in rows]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": more}

    async def recent(self, account_id: str, *, limit: int = 10) -> list[dict[str, Any]]:
        """The dashboard's view: an account's newest batches (none while batches are not opened)."""
        if self._store is None:
            return []
        rows, _ = await self._db("list_batches", account_id, after=None, limit=limit)
        return [batch_json(r) for r in rows]

    async def cancel(self, principal: Principal, batch_id: str) -> dict[str, Any]:
        row = await self._db("cancel", principal.account_id, batch_id)
        if self.runner is not None:
            self.runner.wake()
        return batch_json(row)


def file_json(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": epoch(row["created_at"]),
            "filename": row["filename"], "purpose": row["purpose"], "status": "processed", "expires_at": None,
            "status_details": None}


def batch_json(row: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's Batch object; ``usage`` in its shape, and the charge as ``cost_usd`` (an extension)."""
    errors = None
    if row["errors_json"]:
        errors = {"object": "list", "data": json.loads(row["errors_json"])}
    return {
        "id": row["id"], "object": "batch", "endpoint": row["endpoint"], "errors": errors,
        "input_file_id": row["input_file_id"], "completion_window": row["completion_window"],
        "status": row["status"], "output_file_id": row["output_file_id"], "error_file_id": row["error_file_id"],
        **{name: epoch(row[name]) for name in ("created_at", "in_progress_at", "expires_at", "finalizing_at",
                                               "completed_at", "failed_at", "expired_at", "cancelling_at",
                                               "cancelled_at")},
        "request_counts": {"total": row["total"], "completed": row["completed"], "failed": row["failed"]},
        "usage": {"input_tokens": row["tokens"], "output_tokens": 0, "total_tokens": row["tokens"]},
        "cost_usd": format_usd(row["cost_micro"]),
        "metadata": batch_metadata(row),
    }
