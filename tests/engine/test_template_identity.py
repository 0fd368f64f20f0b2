"""llm2vec's [INST] template is the model's identity, not a directory's metadata (issue 15, part 1).

The issue's case: ``weights`` is a local copy of the base whose config.json has no
``_name_or_path`` and ``adapters`` are [MNTP, SimCSE]. llm2vec's vectors (the goldens) must
come out all the same, through the real loader, whatever the model is called.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gigarouter.engine.base import pack
from gigarouter.providers.local.loading import load_model
from gigarouter.recipes.llm2vec import choose_template
from gigarouter.settings import ConfigError, ModelConfig, Settings
from tests.engine.test_parity import TINY, golden

MNTP, SIMCSE = TINY / "llm2vec-mntp", TINY / "llm2vec-simcse"
INSTRUCT = "mistralai/Mistral-7B-Instruct-v0.2"


@pytest.fixture(scope="module")
def bare_base(tmp_path_factory) -> Path:
    """The tiny Instruct base copied without ``_name_or_path`` (as a save or a copy may leave it)."""
    out = tmp_path_factory.mktemp("bare") / "mistral-instruct-v2"
    shutil.copytree(TINY / "mistral-instruct-v2", out)
    config = json.loads((out / "config.json").read_text())
    del config["_name_or_path"]
    (out / "config.json").write_text(json.dumps(config))
    return out


def local_llm2vec(base: Path, name: str = "my-embedder", **changes) -> ModelConfig:
    return ModelConfig(name=name, recipe="llm2vec", weights=str(base), adapters=(str(MNTP), str(SIMCSE)), **changes)


def embed_golden(config: ModelConfig, cases: list[dict]):
    """(recipe, [min cosine per case]) through load_model and the engine, as the server embeds."""
    # float32 whatever this CPU's auto precision is: identity is checked at fp32's sharp bar, and
    # each precision's own parity lives in test_parity.py
    recipe, engine = load_model(dataclasses.replace(config, dtype="float32"), Settings(cpu_parallel_batches=1),
                                progress=False)
    worst = []
    for case in cases:
        prepared = []
        for text, instruction in zip(case["texts"], case["instructions"], strict=True):
            kind = "query" if instruction is not None and case["input_type"] != "document" else "document"
            prepared += recipe.prepare_texts([text], input_type=kind, instruction=instruction)
        assert [p.token_ids for p in prepared] == case["token_ids"], case["name"]
        ours = torch.from_numpy(engine.embed(pack([p.token_ids for p in prepared], [p.pool_start for p in prepared])))
        cos = torch.nn.functional.cosine_similarity(ours, torch.tensor(case["vectors"]), dim=1)
        worst.append(float(cos.min()))
    return recipe, worst


def test_a_local_base_without_its_name_still_gets_the_template_from_the_adapter(bare_base, caplog):
    cases = golden("llm2vec")["cases"]
    with caplog.at_level(logging.INFO, logger="gigarouter.providers.local.loading"):
        recipe, worst = embed_golden(local_llm2vec(bare_base), cases)
    assert recipe.template == "inst"
    assert recipe.template_source == f"adapter {MNTP} names {INSTRUCT}"
    assert min(worst) >= 0.99999, worst
    assert f"model my-embedder: llm2vec inputs get [INST] ... [/INST], decided by adapter {MNTP}" in caplog.text


def test_the_card_decides_before_the_checkpoint(bare_base, tmp_path):
    """Served under the card's name, with adapters that name no base: the card says Instruct-v2."""
    anonymous = []
    for adapter in (MNTP, SIMCSE):
        copy = tmp_path / adapter.name
        shutil.copytree(adapter, copy)
        config = json.loads((copy / "adapter_config.json").read_text())
        (copy / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
        anonymous.append(str(copy))
    config = ModelConfig(name="llm2vec-mistral-7b-instruct-v2", recipe="llm2vec", weights=str(bare_base),
                         adapters=tuple(anonymous))
    recipe, worst = embed_golden(config, golden("llm2vec")["cases"][:3])
    assert (recipe.template, recipe.template_source) == ("inst", "its catalog card llm2vec-mistral-7b-instruct-v2")
    assert min(worst) >= 0.99999


def test_an_explicit_template_wins_and_nothing_named_means_none_with_a_warning(bare_base, caplog):
    none = local_llm2vec(bare_base, template="none")
    recipe, _ = embed_golden(none, [])
    assert (recipe.template, recipe.template_source) == ("none", "the template key of its [[models]] entry")
    [p] = recipe.prepare_texts(["hello"])
    assert recipe.tokenizer.decode(p.token_ids) == "hello"
    with caplog.at_level(logging.WARNING, logger="gigarouter.providers.local.loading"):
        recipe, _ = embed_golden(ModelConfig(name="plain", recipe="llm2vec", weights=str(bare_base)), [])
    assert recipe.template == "none"
    assert 'set template = "inst" on its [[models]] entry' in caplog.text


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"explicit": "none", "card_slug": "c", "card_template": "inst"},
     ("none", "the template key of its [[models]] entry")),
    ({"card_slug": "c", "card_template": "inst", "recorded": "none"}, ("inst", "its catalog card c")),
    ({"recorded": "inst", "names": [("x", "someone/else")]},
     ("inst", "the record that models merge wrote beside its config.json")),
    ({"names": [("adapter a", "McGill-NLP/x"), ("adapter b", INSTRUCT), ("the base /m", "/m")]},
     ("inst", f"adapter b names {INSTRUCT}")),
    ({"names": [("config.json of /m", "meta-llama/Llama-2-7b-chat-hf")]},
     ("inst", "config.json of /m names meta-llama/Llama-2-7b-chat-hf")),
    ({"names": [("the base /m", "/m")]}, ("none", "no card, and the checkpoint names no Instruct base (/m)")),
])
def test_decision_order(kwargs, expected):
    template = choose_template(**kwargs)
    assert (template.name, template.source) == expected


def test_the_template_key_is_checked():
    with pytest.raises(ConfigError, match="template must be one of inst, none"):
        ModelConfig(name="m", recipe="llm2vec", weights="/m", template="chat")
    with pytest.raises(ConfigError, match="llm2vec recipe only"):
        ModelConfig(name="m", recipe="e5", weights="/m", template="inst")


def test_v1_models_shows_the_template(bare_base, tmp_path):
    from fastapi.testclient import TestClient

    from gigarouter.api.app import create_app
    from tests.conftest import wait_ready

    settings = Settings(data_dir=tmp_path, models=(local_llm2vec(bare_base),), cpu_parallel_batches=1)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        entry = client.get("/v1/models/my-embedder").json()
        vector = client.post("/v1/embeddings", json={"model": "my-embedder", "input": "Paris is the capital and "
                                                     "most populous city of France.", "normalize": False}).json()
    assert entry["template"] == "inst" and entry["template_source"].startswith("adapter ")
    case = next(c for c in golden("llm2vec")["cases"] if c["name"] == "document_short")
    ours = np.array(vector["data"][0]["embedding"])
    reference = np.array(case["vectors"][2])
    assert ours @ reference / np.linalg.norm(ours) / np.linalg.norm(reference) >= 0.99999
