"""Resolving weights: local directories, the embedded package, and the Hub (through a real local HTTP stand-in)."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest

from gigarouter.engine.sources import Fetcher, offline_message, resolve_checkpoint, split_revision
from gigarouter.errors import ModelLoadError
from gigarouter.settings import EMBEDDED_WEIGHTS, ModelConfig
from tests.engine.fake_hub import FakeHub

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny"
BASE = "mistralai/Mistral-7B-Instruct-v0.2"
MNTP = "McGill-NLP/LLM2Vec-Mistral-7B-Instruct-v2-mntp"
SIMCSE = "McGill-NLP/LLM2Vec-Mistral-7B-Instruct-v2-mntp-unsup-simcse"


@pytest.fixture
def hub(tmp_path):
    with FakeHub() as hub:
        for repo, name in ((BASE, "mistral-instruct-v2"), (MNTP, "llm2vec-mntp"), (SIMCSE, "llm2vec-simcse")):
            hub.add(repo, TINY / name)
        yield hub


def llm2vec(**changes) -> ModelConfig:
    return ModelConfig(**{"name": "llm2vec", "recipe": "llm2vec", "weights": MNTP, "adapters": (SIMCSE,), **changes})


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in b.iterdir() if p.is_file())
    return sorted(p.name for p in a.iterdir()) == names and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def test_adapter_weights_resolve_their_base_from_the_hub(hub, tmp_path):
    resolved = resolve_checkpoint(llm2vec(), cache_dir=tmp_path, endpoint=hub.url, progress=False)
    assert same_files(resolved.base_dir, TINY / "mistral-instruct-v2")
    assert [d.name for d in resolved.adapter_dirs] and len(resolved.adapter_dirs) == 2
    assert same_files(resolved.adapter_dirs[0], TINY / "llm2vec-mntp")       # MNTP first, then SimCSE
    assert same_files(resolved.adapter_dirs[1], TINY / "llm2vec-simcse")
    assert resolved.tokenizer_dir == resolved.adapter_dirs[0]                 # the MNTP repo's own tokenizer
    assert resolved.base_name == BASE
    assert resolved.sources == (MNTP, BASE, SIMCSE)
    assert all(p.is_relative_to(tmp_path) for p in (resolved.base_dir, *resolved.adapter_dirs))
    downloads = [r for r in hub.requests if r.startswith("GET /") and "/resolve/" in r]
    assert any(r.endswith("/model.safetensors") for r in downloads)


def test_a_cached_model_resolves_offline_without_a_request(hub, tmp_path):
    first = resolve_checkpoint(llm2vec(), cache_dir=tmp_path, endpoint=hub.url, progress=False)
    seen = len(hub.requests)
    again = resolve_checkpoint(llm2vec(), cache_dir=tmp_path, endpoint=hub.url, offline=True, progress=False)
    assert again == first and len(hub.requests) == seen


def test_offline_and_not_cached_says_what_to_do(tmp_path):
    with pytest.raises(ModelLoadError) as info:
        resolve_checkpoint(llm2vec(), cache_dir=tmp_path, offline=True, progress=False)
    assert info.value.message == (
        f"model {MNTP} is not in the local cache and the Hub cannot be reached; run "
        f"`gigarouter models pull {MNTP}` where there is network, or point `weights` at a directory")
    assert info.value.message == offline_message(MNTP)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_unreachable_hub_falls_back_to_the_cache_or_says_so(hub, tmp_path):
    down = closed_port_url()
    with pytest.raises(ModelLoadError, match="not in the local cache and the Hub cannot be reached"):
        resolve_checkpoint(llm2vec(), cache_dir=tmp_path, endpoint=down, progress=False)
    cached = resolve_checkpoint(llm2vec(), cache_dir=tmp_path, endpoint=hub.url, progress=False)
    assert resolve_checkpoint(llm2vec(), cache_dir=tmp_path, endpoint=down, progress=False) == cached


def test_revision_pins_the_commit(hub, tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    for directory, width in ((old, 32), (new, 64)):
        shutil.copytree(TINY / "linq", directory)
        config = json.loads((directory / "config.json").read_text())
        (directory / "config.json").write_text(json.dumps({**config, "note": width}))
    old_sha = hub.add("acme/linq", old)
    hub.add("acme/linq", new)                                   # main moves on
    fetcher = Fetcher(cache_dir=tmp_path / "cache", endpoint=hub.url, progress=False)

    def note(path: Path) -> int:
        return json.loads((path / "config.json").read_text())["note"]

    assert note(fetcher.fetch("acme/linq")) == 64
    assert note(fetcher.fetch("acme/linq", old_sha)) == 32
    pinned = resolve_checkpoint(ModelConfig(name="l", recipe="e5", weights="acme/linq", revision=old_sha),
                                cache_dir=tmp_path / "cache", endpoint=hub.url, progress=False)
    assert note(pinned.base_dir) == 32 and pinned.base_dir.name == old_sha
    assert note(fetcher.fetch(*split_revision(f"acme/linq@{old_sha}"))) == 32


def test_unknown_repo_and_revision_are_clear_errors(hub, tmp_path):
    fetcher = Fetcher(cache_dir=tmp_path, endpoint=hub.url, progress=False)
    with pytest.raises(ModelLoadError, match="acme/nothing was not found on the Hub"):
        fetcher.fetch("acme/nothing")
    with pytest.raises(ModelLoadError, match="has no revision 'v9'"):
        fetcher.fetch(BASE, "v9")
    with pytest.raises(ModelLoadError, match="not a valid Hub id"):
        fetcher.fetch("acme/bad name!")


def test_downloads_skip_pickles_and_consolidated_weights(hub, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(TINY / "linq", repo)
    (repo / "pytorch_model.bin").write_bytes(b"pickle")
    (repo / "consolidated.safetensors").write_bytes(b"duplicate weights")
    hub.add("acme/extra", repo)
    got = Fetcher(cache_dir=tmp_path / "cache", endpoint=hub.url, progress=False).fetch("acme/extra")
    assert same_files(got, TINY / "linq")


def test_progress_bar_shows_only_when_asked(hub, tmp_path, capfd):
    Fetcher(cache_dir=tmp_path / "a", endpoint=hub.url, progress=True).fetch(BASE)
    assert "Fetching" in capfd.readouterr().err
    Fetcher(cache_dir=tmp_path / "b", endpoint=hub.url, progress=False).fetch(BASE)
    assert "Fetching" not in capfd.readouterr().err


def test_local_directories_and_the_embedded_package(tmp_path):
    local = resolve_checkpoint(ModelConfig(name="l", recipe="e5", weights=str(TINY / "linq")), offline=True)
    assert local.base_dir == TINY / "linq" and local.adapter_dirs == () and local.tokenizer_dir == TINY / "linq"
    assert local.base_name == "Linq-AI-Research/Linq-Embed-Mistral"           # config.json _name_or_path
    embedded = resolve_checkpoint(ModelConfig(name="m", recipe="sbert", weights=EMBEDDED_WEIGHTS), offline=True)
    assert (embedded.base_dir / "model.safetensors").exists()
    with pytest.raises(ModelLoadError, match="neither a directory nor a Hub id"):
        resolve_checkpoint(ModelConfig(name="x", recipe="e5", weights=str(tmp_path / "missing")), offline=True)


def test_local_adapter_chain_with_local_base(tmp_path):
    """An adapter directory whose base_model_name_or_path is itself a local directory."""
    mntp = tmp_path / "mntp"
    shutil.copytree(TINY / "llm2vec-mntp", mntp)
    config = json.loads((mntp / "adapter_config.json").read_text())
    base = str(TINY / "mistral-instruct-v2")
    (mntp / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": base}))
    resolved = resolve_checkpoint(llm2vec(weights=str(mntp), adapters=(str(TINY / "llm2vec-simcse"),)), offline=True)
    assert resolved.base_dir == TINY / "mistral-instruct-v2"
    assert resolved.adapter_dirs == (mntp, TINY / "llm2vec-simcse")
    assert resolved.base_name == BASE                                           # the local base's _name_or_path
    with pytest.raises(ModelLoadError, match="has no adapter_config.json"):
        resolve_checkpoint(llm2vec(weights=str(mntp), adapters=(str(TINY / "linq"),)), offline=True)


def test_llm2vec_from_the_hub_reproduces_the_golden_vectors(hub, tmp_path):
    from gigarouter.recipes.base import build_recipe
    from tests.engine.test_parity import Served, cosines, golden

    resolved = resolve_checkpoint(llm2vec(), cache_dir=tmp_path, endpoint=hub.url, progress=False)
    recipe = build_recipe("llm2vec", resolved.tokenizer_dir, card_instructions=None, base_name=resolved.base_name)
    served = Served(recipe, resolved)
    for case in golden("llm2vec")["cases"][:4]:
        prepared = served.prepare(case)
        assert [p.token_ids for p in prepared] == case["token_ids"]
        assert cosines(served.embed(prepared), case["vectors"]).min() >= 0.99999
