"""The command line, run as a user runs it (a subprocess for serve, CliRunner for the rest)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import numpy as np
from typer.testing import CliRunner

from gigarouter.cli import app
from tests.conftest import free_port, wait_until_ready

runner = CliRunner()


def test_help_everywhere():
    for args in ([], ["serve"], ["embed"]):
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output


def test_embed_text_file_to_npy_and_jsonl(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("first line\n\nsecond line\nthird, ünïcödé\n", encoding="utf-8")
    result = runner.invoke(app, ["embed", str(src), "--out", str(tmp_path / "out.npy")])
    assert result.exit_code == 0, result.output
    vectors = np.load(tmp_path / "out.npy")
    assert vectors.shape == (3, 384)

    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"id": "a", "text": "first line"}\n"second line"\n', encoding="utf-8")
    result = runner.invoke(app, ["embed", str(jsonl), "--model", "all-minilm-l6-v2"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "in.embeddings.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", 2]
    np.testing.assert_allclose(rows[0]["embedding"], vectors[0], atol=2e-6)


def test_embed_rejects_bad_files_and_models(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"nope": 1}\n')
    assert runner.invoke(app, ["embed", str(bad)]).exit_code != 0
    ok = tmp_path / "ok.txt"
    ok.write_text("x\n")
    result = runner.invoke(app, ["embed", str(ok), "--model", "nope"])
    assert result.exit_code != 0 and "not configured" in result.output


def test_serve_starts_answers_and_stops_gracefully(tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gigarouter.cli", "serve", "--port", str(port),
                             "--data-dir", str(tmp_path)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", alive=lambda: proc.poll() is None)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings",
                       json={"model": "all-minilm-l6-v2", "input": "hello"}, timeout=30)
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 384
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()


def test_serve_refuses_a_bad_config(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[[models]]\nname = "x"\nrecipe = "nope"\nweights = "w"\n')
    result = runner.invoke(app, ["serve", "--config", str(config)])
    assert result.exit_code == 2 and "recipe must be one of" in result.output
