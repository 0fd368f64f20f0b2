"""Batch lines ride the scheduler's bulk lane, whatever their size; a small direct request stays interactive."""

from __future__ import annotations

import time

from gigarouter.scheduler.queue import Scheduler
from tests.batches.helpers import MODEL, jsonl, request_line


def test_batch_lines_ride_the_bulk_lane(fake_client_factory, monkeypatch):
    lanes: list[bool] = []
    submit = Scheduler.submit

    async def recording(self, items, *, interactive):
        lanes.append(interactive)
        return await submit(self, items, interactive=interactive)

    client = fake_client_factory(batch_concurrency=4)
    monkeypatch.setattr(Scheduler, "submit", recording)
    assert client.post("/v1/embeddings", json={"model": MODEL, "input": "a query"}).status_code == 200
    assert lanes == [True]

    data = jsonl([request_line(f"r{i}", {"model": MODEL, "input": f"short text {i}"}) for i in range(6)])
    uploaded = client.post("/v1/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", data)}).json()
    batch = client.post("/v1/batches", json={"input_file_id": uploaded["id"], "endpoint": "/v1/embeddings",
                                             "completion_window": "24h"}).json()
    deadline = time.monotonic() + 60
    while (state := client.get(f"/v1/batches/{batch['id']}").json())["status"] != "completed":
        assert time.monotonic() < deadline, state
        time.sleep(0.05)
    assert state["request_counts"] == {"total": 6, "completed": 6, "failed": 0}
    assert lanes == [True] + [False] * 6
