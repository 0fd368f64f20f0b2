"""Batch lines ride the scheduler's background lane, whatever their size; a small direct request stays
interactive; and background work waits while queries are about."""

from __future__ import annotations

import time

from gigarouter.scheduler.queue import Scheduler
from tests.batches.helpers import MODEL, jsonl, request_line


def test_batch_lines_ride_the_background_lane(fake_client_factory, monkeypatch):
    lanes: list[tuple[bool, bool]] = []
    submit = Scheduler.submit

    async def recording(self, items, *, interactive, background=False, **rest):
        lanes.append((interactive, background))
        return await submit(self, items, interactive=interactive, background=background, **rest)

    client = fake_client_factory(batch_concurrency=4)
    monkeypatch.setattr(Scheduler, "submit", recording)
    assert client.post("/v1/embeddings", json={"model": MODEL, "input": "a query"}).status_code == 200
    assert lanes == [(True, False)]

    data = jsonl([request_line(f"r{i}", {"model": MODEL, "input": f"short text {i}"}) for i in range(6)])
    uploaded = client.post("/v1/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", data)}).json()
    batch = client.post("/v1/batches", json={"input_file_id": uploaded["id"], "endpoint": "/v1/embeddings",
                                             "completion_window": "24h"}).json()
    deadline = time.monotonic() + 60
    while (state := client.get(f"/v1/batches/{batch['id']}").json())["status"] != "completed":
        assert time.monotonic() < deadline, state
        time.sleep(0.05)
    assert state["request_counts"] == {"total": 6, "completed": 6, "failed": 0}
    assert lanes == [(True, False)] + [(False, True)] * 6


def test_background_work_waits_while_queries_are_about_and_never_fills_their_queue():
    import asyncio

    from gigarouter.recipes.base import PreparedInput
    from tests.conftest import FakeEngine

    def items(n: int, length: int = 8) -> list[PreparedInput]:
        return [PreparedInput(token_ids=list(range(101, 101 + length)), pool_start=0) for _ in range(n)]

    async def scenario() -> None:
        engine = FakeEngine()
        scheduler = Scheduler(engine, model="m", token_budget=64, max_queued_tokens=100,
                              interactive_window_s=0.5, background_interval_s=10.0)
        scheduler.start()
        try:
            query = await scheduler.submit(items(1), interactive=True)
            await query.future
            # Background work past the foreground bound is admitted, and does not block a query's admission.
            background = await scheduler.submit(items(12), interactive=False, background=True)
            await asyncio.sleep(0.2)
            assert not background.future.done()              # a query came 0.2 s ago: held back
            query = await scheduler.submit(items(1), interactive=True)
            await query.future
            vectors = await asyncio.wait_for(background.future, timeout=10)   # runs once queries stop
            assert vectors.shape == (12, engine.dim)
        finally:
            await scheduler.stop()

    asyncio.run(scenario())
