"""`gigarouter models list | pull | merge` against a local stand-in for the Hub."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from gigarouter.engine.sources import resolve_checkpoint
from gigarouter.models_cli import app
from gigarouter.recipes.llm2vec import Llm2VecRecipe
from gigarouter.settings import ModelConfig
from tests.engine.fake_hub import FakeHub
from tests.engine.test_parity import Served, cosines, golden
from tests.engine.test_sources import BASE, MNTP, SIMCSE, TINY

runner = CliRunner()
WIDE = {"COLUMNS": "300", "NO_COLOR": "1", "HF_ENDPOINT": ""}


@pytest.fixture
def hub():
    with FakeHub() as hub:
        for repo, name in ((BASE, "mistral-instruct-v2"), (MNTP, "llm2vec-mntp"), (SIMCSE, "llm2vec-simcse")):
            hub.add(repo, TINY / name)
        yield hub


def invoke(*args: str):
    result = runner.invoke(app, list(args), env=WIDE)
    return result.exit_code, result.output


def test_pull_a_catalog_model_resolves_the_whole_adapter_chain(hub, tmp_path):
    code, out = invoke("pull", "llm2vec-mistral-7b-instruct-v2", "--cache-dir", str(tmp_path), "--endpoint", hub.url)
    assert code == 0, out
    assert "base" in out and out.count("adapter ") == 2
    code, out = invoke("list", "--cache-dir", str(tmp_path))
    assert code == 0, out
    row = next(line for line in out.splitlines() if "llm2vec-mistral-7b-instruct-v2" in line)
    assert "yes" in row and "mit" in row
    linq = next(line for line in out.splitlines() if "linq-embed-mistral" in line)
    assert "no" in linq and "cc-by-nc-4.0" in linq


def test_pull_without_network_says_what_to_do(tmp_path):
    code, out = invoke("pull", MNTP, "--cache-dir", str(tmp_path), "--endpoint", "http://127.0.0.1:9")
    assert code == 1 and "Traceback" not in out
    text = " ".join(out.split())
    assert f"cannot download {MNTP}: the Hub (http://127.0.0.1:9) cannot be reached" in text
    assert "copy the Hugging Face cache here" in text and "HF_ENDPOINT" in text
    # Not "run `gigarouter models pull` where there is network" as the whole advice: this is models pull.
    config = tmp_path / "offline.toml"
    config.write_text("offline = true\n")
    code, out = invoke("pull", MNTP, "--config", str(config), "--cache-dir", str(tmp_path))
    assert code == 1 and "offline = true" in out


def test_help_shows_toml_tables_as_written():
    result = runner.invoke(app, ["list", "--help"], env=WIDE)
    assert result.exit_code == 0 and "[[models]]" in result.output


def test_list_shows_configured_models(tmp_path):
    config = tmp_path / "gigarouter.toml"
    config.write_text(f'''
[[models]]
name = "linq"
recipe = "e5"
weights = "{TINY / 'linq'}"
card = "linq-embed-mistral"

[[models]]
name = "llm2vec"
recipe = "llm2vec"
weights = "{MNTP}"
adapters = ["{SIMCSE}"]
''')
    code, out = invoke("list", "--config", str(config), "--cache-dir", str(tmp_path / "empty"))
    assert code == 0, out
    # Not a terminal: plain columns, one line per model however long its cells.
    assert "│" not in out and "┃" not in out
    linq = next(line for line in out.splitlines() if line.startswith("linq "))
    assert "yes" in linq and "cc-by-nc-4.0" in linq
    llm2vec = next(line for line in out.splitlines() if line.startswith("llm2vec "))
    assert MNTP in llm2vec and "not cached" in llm2vec


def test_merge_a_configured_model(hub, tmp_path):
    config = tmp_path / "gigarouter.toml"
    config.write_text(f'''
[[models]]
name = "llm2vec"
recipe = "llm2vec"
weights = "{MNTP}"
adapters = ["{SIMCSE}"]
''')
    out_dir = tmp_path / "merged"
    code, out = invoke("merge", "llm2vec", "--out", str(out_dir), "--config", str(config),
                       "--cache-dir", str(tmp_path / "cache"), "--endpoint", hub.url)
    assert code == 0, out
    resolved = resolve_checkpoint(ModelConfig(name="m", recipe="llm2vec", weights=str(out_dir)), offline=True)
    served = Served(Llm2VecRecipe.from_checkpoint(resolved.tokenizer_dir, base_name=resolved.base_name), resolved)
    case = golden("llm2vec")["cases"][0]
    assert cosines(served.embed(served.prepare(case)), case["vectors"]).min() >= 0.99999
    code, out = invoke("merge", "llm2vec", "--out", str(out_dir), "--config", str(config),
                       "--cache-dir", str(tmp_path / "cache"), "--offline")
    assert code == 1 and "not empty" in out


def test_bad_arguments(tmp_path):
    code, out = invoke("merge", str(TINY / "linq"), "--out", str(tmp_path / "o"), "--dtype", "int8")
    assert code == 2 and "--dtype" in out
    code, out = invoke("list", "--config", str(tmp_path / "missing.toml"))
    assert code == 2 and "not found" in out
