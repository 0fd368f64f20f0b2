"""The command line, run as a user runs it (a subprocess for serve, CliRunner for the rest)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

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


def test_serve_prints_ready_once(tmp_path):
    """A script may wait for the "ready" line instead of polling /ready: once it is printed, /ready is 200."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gigarouter.cli", "serve", "--port", str(port),
                             "--data-dir", str(tmp_path), "--log-level", "warning"],
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(line.startswith("ready in ") for line in seen):
            if select.select([proc.stdout], [], [], 1.0)[0]:
                line = proc.stdout.readline().decode()
                if not line:
                    break
                seen.append(line)
        assert any(line.startswith("ready in ") for line in seen), "".join(seen)
        assert httpx.get(f"http://127.0.0.1:{port}/ready", timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    lines = [line for line in "".join(seen).splitlines() + out.decode().splitlines() if line.startswith("ready in ")]
    assert len(lines) == 1 and f"serving all-minilm-l6-v2 on http://127.0.0.1:{port}" in lines[0], lines


def test_serve_exits_non_zero_when_a_model_fails_to_load(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(f'offline = true\nport = {free_port()}\n'
                      '[[models]]\nname = "broken"\nrecipe = "e5"\nweights = "nobody/nothing"\n')
    proc = subprocess.run([sys.executable, "-m", "gigarouter.cli", "serve", "--config", str(config),
                           "--data-dir", str(tmp_path), "--log-level", "warning"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "model broken failed to load: model nobody/nothing is not in the local cache" in proc.stderr
    assert "keep_serving_on_load_failure = true" in proc.stderr and "Traceback" not in proc.stderr


def test_serve_takes_host_and_port_from_the_config_unless_flags_are_given(tmp_path, monkeypatch):
    import gigarouter.serving

    seen = []

    class Recorder:
        def __init__(self, app, settings, **kwargs):
            seen.append((settings.host, settings.port))

        def serve_until_stopped(self) -> int:
            return 0

    monkeypatch.setattr(gigarouter.serving, "Server", Recorder)
    config = tmp_path / "c.toml"
    config.write_text('host = "127.0.0.2"\nport = 9123\n')
    for flags, expected in (([], ("127.0.0.2", 9123)), (["--port", "9200"], ("127.0.0.2", 9200)),
                            (["--host", "127.0.0.3", "--port", "9300"], ("127.0.0.3", 9300))):
        result = runner.invoke(app, ["serve", "--config", str(config), "--data-dir", str(tmp_path), *flags])
        assert result.exit_code == 0, result.output
        assert seen[-1] == expected
    result = runner.invoke(app, ["serve", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0 and seen[-1] == ("127.0.0.1", 8000)


def test_help_shows_toml_tables_as_written():
    result = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "[[models]]" in result.output


def test_embed_checks_the_output_before_loading_anything(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("x\n")
    for out, message in ((tmp_path / "out.csv", "unknown output type '.csv'"),
                         (tmp_path / "no" / "such" / "out.npy", "does not exist"),
                         (tmp_path, "is a directory")):
        result = runner.invoke(app, ["embed", str(src), "--out", str(out)], env={"COLUMNS": "300"})
        assert result.exit_code == 2 and message in result.output, result.output
        assert "loading" not in result.output


def test_embed_reports_blank_lines_and_keeps_line_numbers_as_ids(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("first\n\n   \nsecond\r\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["embed", str(src), "--out", str(out)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert f"skipped 2 blank lines of {src} (line 2, 3)" in result.output
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [1, 4]


def test_embed_load_error_is_one_line(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('offline = true\n[[models]]\nname = "broken"\nrecipe = "e5"\nweights = "nobody/nothing"\n')
    src = tmp_path / "in.txt"
    src.write_text("x\n")
    proc = subprocess.run([sys.executable, "-m", "gigarouter.cli", "embed", str(src), "--model", "broken",
                           "--config", str(config), "--out", str(tmp_path / "o.npy")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "400"})
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["error: could not load broken: model nobody/nothing is not in the local cache and the Hub "
                     "cannot be reached; run `gigarouter models pull nobody/nothing` where there is network, "
                     "or point `weights` at a directory"], proc.stderr
    assert not (tmp_path / "o.npy").exists()


def test_a_missing_optional_package_is_a_one_line_hint(tmp_path):
    """psycopg missing (blocked in sys.modules): `accounts list` on Postgres and `serve` say which extra."""
    config = tmp_path / "pg.toml"
    config.write_text('database_url = "postgresql://u@127.0.0.1:1/db"\n')
    script = ("import sys; sys.modules['psycopg'] = None; sys.argv = ['gigarouter', *sys.argv[1:]]\n"
              "from gigarouter.cli import main; main()")
    for args in (["accounts", "list", "--database-url", "postgresql://u@127.0.0.1:1/db"],
                 ["serve", "--config", str(config), "--data-dir", str(tmp_path)]):
        proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "COLUMNS": "400"})
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.strip().splitlines() == [
            "error: PostgreSQL (database_url = \"postgresql://...\") needs the Python package 'psycopg', "
            "which is not installed: pip install 'gigarouter[postgres]'"], proc.stderr


def test_embed_writes_compact_types_as_the_api_does(tmp_path, real_client):
    from gigarouter.pooling.encoding import quantize

    src = tmp_path / "in.txt"
    src.write_text("first line\nsecond line\n", encoding="utf-8")
    r = real_client.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": ["first line", "second line"],
                                                 "dimensions": 64})
    floats = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    for kind, dtype in (("int8", np.int8), ("ubinary", np.uint8)):
        result = runner.invoke(app, ["embed", str(src), "--out", str(tmp_path / f"{kind}.npy"),
                                     "--embedding-type", kind, "--dimensions", "64"])
        assert result.exit_code == 0, result.output
        got = np.load(tmp_path / f"{kind}.npy")
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, quantize(floats, kind))
    result = runner.invoke(app, ["embed", str(src), "--out", str(tmp_path / "b.jsonl"), "--embedding-type", "binary"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert len(rows[0]["embedding"]) == 48 and all(isinstance(x, int) for x in rows[0]["embedding"])
    assert runner.invoke(app, ["embed", str(src), "--embedding-type", "int4"]).exit_code != 0
