"""Summaries, goal ratios, markdown and plots from synthetic results; the CLI end to end on tiny inputs."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gigarouter.bench import report
from gigarouter.bench.compare import Cell, goals, summarize
from gigarouter.bench_cli import app
from gigarouter.settings import Settings
from tests.conftest import FakeEngine, fake_loader, live_server

CELLS = (Cell("c=1", 1, 1), Cell("bulk", 4, 32))


def _row(server, cell, rnd, ips, p50=10.0, errors=None):
    return {"server": server, "cell": cell, "round": rnd, "inputs_per_s": ips, "tokens_per_s": 10 * ips,
            "usage_tokens_per_s": 10 * ips, "latency_ms": {"p50": p50, "p99": 2 * p50}, "requests": 5,
            "errors": errors or {}, "server_cpu_ms_per_input": 3.0}


def _result():
    rows = [_row("gigarouter", "c=1", 0, 30), _row("gigarouter", "c=1", 1, 34),
            _row("infinity-emb", "c=1", 0, 10), _row("infinity-emb", "c=1", 1, 10, errors={"429": 2}),
            _row("gigarouter", "bulk", 0, 60), _row("gigarouter", "bulk", 1, 60),
            _row("infinity-emb", "bulk", 0, 30), _row("infinity-emb", "bulk", 1, 30, errors={"429": 1})]
    names = ["gigarouter", "infinity-emb"]
    result = {"server_names": names, "summary": summarize(rows, names, CELLS),
              "offline": {"inputs": 10, "tokens": 100, "repeats": 2, "st_batch_size": 32, "our_token_budget": 8192,
                          "agreement": {"min_cosine": 0.99999},
                          "results": {"sentence-transformers": {"inputs_per_s": 40.0, "tokens_per_s": 400.0},
                                      "gigarouter-embedder": {"inputs_per_s": 50.0, "tokens_per_s": 500.0}}},
              "latency": {n: {"query_tokens": 16, "idle": {"p50_ms": 10.0, "p99_ms": 12.0},
                              "loaded": {"p50_ms": 100.0, "p99_ms": 150.0}, "p50_slowdown": 10.0,
                              "bulk": {"inputs_per_s": 20.0}} for n in names}}
    result["goals"] = goals(result)
    return result


def test_summary_averages_rounds_and_adds_errors():
    s = _result()["summary"]
    g = s[0]["servers"]["gigarouter"]
    assert g["inputs_per_s"] == 32 and (g["inputs_per_s_min"], g["inputs_per_s_max"]) == (30, 34)
    assert s[0]["servers"]["infinity-emb"]["errors"] == {"429": 2}
    assert s[1]["servers"]["infinity-emb"]["rounds"] == 2


def test_goals_are_ratios_of_the_summary():
    g = _result()["goals"]
    assert g["per_cell"]["c=1"]["vs_infinity"] == pytest.approx(3.2)
    assert g["per_cell"]["bulk"]["vs_st_offline"] == pytest.approx(1.5)
    assert g["best_cell"] == "bulk" and g["best_served_vs_best_infinity"] == pytest.approx(2.0)


def test_markdown_and_plots(tmp_path):
    result = _result()
    md = report.compare_markdown(result)
    assert "| c=1 | 32.0 | 10.0 | 3.20x | 0.80x |" in md
    assert "429: 2" in md
    paths = report.plot_compare(result, tmp_path)
    assert [p.name for p in paths] == ["compare-throughput.png", "compare-latency.png", "compare-query-latency.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_engine_command_writes_json_and_plot(tmp_path):
    out, plot = tmp_path / "e.json", tmp_path / "e.png"
    res = CliRunner().invoke(app, ["engine", "--model-shape", "bert-tiny", "--device", "cpu", "--corpus-size", "16",
                                   "--lengths", "16", "--budgets", "256,512", "--min-seconds", "0",
                                   "--out", str(out), "--plot", str(plot)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["kind"] == "engine" and data["command"].startswith("gigarouter bench")
    assert plot.stat().st_size > 1000
    assert "| mixed |" in res.output


def test_http_command_against_a_live_server(tmp_path):
    out = tmp_path / "h.json"
    with live_server(Settings(), loader=fake_loader(FakeEngine())) as base:
        res = CliRunner().invoke(app, ["http", "--url", base, "--concurrency", "1,2", "--max-requests", "6",
                                       "--inputs-per-request", "3", "--corpus-size", "32", "--out", str(out)])
    assert res.exit_code == 0, res.output
    runs = json.loads(out.read_text())["runs"]
    assert [r["concurrency"] for r in runs] == [1, 2]
    assert all(r["requests"] == r["ok_requests"] == 6 and r["inputs"] == 18 for r in runs)
    assert all(r["tokens"] == r["usage_tokens"] > 0 for r in runs)


def test_http_command_refuses_non_loopback():
    res = CliRunner().invoke(app, ["http", "--url", "http://example.com"])
    assert res.exit_code != 0
