"""The runner's edges, in process (open mode, the fake engine)."""

from __future__ import annotations

import time

from tests.batches.helpers import MODEL, jsonl, request_line


def _wait(client, batch_id: str) -> dict:
    deadline = time.monotonic() + 60
    while (state := client.get(f"/v1/batches/{batch_id}").json())["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline, state
        time.sleep(0.05)
    return state


def test_a_batch_whose_input_vanished_from_disk_fails_saying_so(fake_client_factory, tmp_path):
    client = fake_client_factory(batch_files_dir=tmp_path / "files")
    data = jsonl([request_line("a", {"model": MODEL, "input": "x"})])
    uploaded = client.post("/v1/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", data)}).json()
    (tmp_path / "files" / f"{uploaded['id']}.jsonl").unlink()          # an operator cleaned up the wrong file
    batch = client.post("/v1/batches", json={"input_file_id": uploaded["id"], "endpoint": "/v1/embeddings",
                                             "completion_window": "24h"}).json()
    state = _wait(client, batch["id"])
    assert state["status"] == "failed" and state["errors"]["data"][0]["code"] == "file_missing"
    assert client.get(f"/v1/files/{uploaded['id']}/content").status_code == 404


def test_open_mode_keeps_files_in_the_configured_directory(fake_client_factory, tmp_path):
    client = fake_client_factory(batch_files_dir=tmp_path / "elsewhere")
    data = jsonl([request_line(f"r{i}", {"model": MODEL, "input": f"t{i}"}) for i in range(2)])
    uploaded = client.post("/v1/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", data)}).json()
    assert (tmp_path / "elsewhere" / f"{uploaded['id']}.jsonl").read_bytes() == data
    batch = client.post("/v1/batches", json={"input_file_id": uploaded["id"], "endpoint": "/v1/embeddings",
                                             "completion_window": "24h"}).json()
    state = _wait(client, batch["id"])
    assert state["status"] == "completed" and state["cost_usd"] == "0.000000"     # open mode charges nothing
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == sorted(
        [f"{uploaded['id']}.jsonl", f"{batch['id']}-output.jsonl"])           # the spool is gone
