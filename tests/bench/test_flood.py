"""bench flood: the bodies file, the bar, and flood.lua driven by the real wrk against a live server."""

from __future__ import annotations

import json
import shutil

import pytest

from gigarouter.bench.flood import WrkRun, markdown, run_wrk, verdict, write_bodies
from gigarouter.settings import Settings
from tests.conftest import FakeEngine, fake_loader, live_server


def run_of(statuses: dict[str, int], *, ok_ms: list[float], duration: float = 10.0, missing: int = 0,
           timeouts: int = 0, connections: int = 1000) -> WrkRun:
    return WrkRun(connections=connections, duration_s=duration, requests=sum(statuses.values()), statuses=statuses,
                  refusals_without_retry_after=missing,
                  socket_errors={"connect": 0, "read": 0, "write": 0, "timeout": timeouts}, ok_latency_ms=ok_ms)


def test_bodies_are_one_request_per_line(tmp_path):
    path = write_bodies(tmp_path / "b.jsonl", ["a", "b", "c", "d", "e"], model="m", inputs_per_request=2)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [{"model": "m", "input": ["a", "b"]}, {"model": "m", "input": ["c", "d"]}]
    single = write_bodies(tmp_path / "s.jsonl", ["a"], model="m", inputs_per_request=1)
    assert json.loads(single.read_text()) == {"model": "m", "input": "a"}


def test_verdict_applies_each_part_of_the_bar():
    capacity = run_of({"200": 1000}, ok_ms=[100.0] * 1000, connections=8)
    health = {"failures": {}, "latency_ms": {"p50": 5.0, "p99": 40.0, "max": 60.0}}
    good = run_of({"200": 900, "429": 5000}, ok_ms=[1000.0] * 900)
    assert all(verdict(capacity, good, health).values())
    slow = run_of({"200": 700, "500": 1, "404": 2}, ok_ms=[6000.0] * 700, missing=3, timeouts=1)
    failed = {k for k, v in verdict(capacity, slow, {**health, "latency_ms": {"p99": 300.0}}).items() if not v}
    assert failed == {"no_5xx_but_503", "no_socket_errors_or_timeouts", "every_refusal_429_or_503_with_retry_after",
                      "goodput_at_least_80pct_of_capacity", "success_p99_at_most_5s", "health_p99_at_most_250ms"}
    result = {"capacity": capacity.summary(), "flood": good.summary(), "health": {**health, "probes": 10},
              "goodput_ratio": 0.9, "checks": verdict(capacity, good, health)}
    assert "| flood | 1000 | 90.0 |" in markdown(result)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install -y wrk)")
def test_flood_lua_counts_statuses_retry_after_and_success_latency(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", cache="off")
    with live_server(settings, loader=fake_loader(FakeEngine())) as base:
        bodies = write_bodies(tmp_path / "b.jsonl", ["hello world", "a query", "some text"], model="all-minilm-l6-v2",
                              inputs_per_request=1)
        run = run_wrk(base, bodies=bodies, connections=4, duration_s=1, threads=1, work_dir=tmp_path)
    assert run.ok > 0 and len(run.ok_latency_ms) == run.ok
    assert all(ms > 0 for ms in run.ok_latency_ms)
    assert run.refusals_without_retry_after == 0 and not any(run.socket_errors.values())
