"""mteb 2.x evaluates gigarouter models directly: the documented one-liners, and which instruction each side gets."""

from __future__ import annotations

from pathlib import Path

import mteb
import numpy as np
import pytest

from gigarouter import Embedder
from gigarouter.catalog.cards import find_card
from gigarouter.onboarding.mteb_models import for_embedder, for_server
from gigarouter.settings import ModelConfig, Settings
from tests.conftest import live_server
from tests.onboarding.tiny_tasks import SciFact, TinyRetrieval, TinySTS

LINQ = Path(__file__).resolve().parents[1] / "fixtures" / "tiny" / "linq"


def scores(result) -> dict[str, float]:
    return {r.task_name: r.get_score() for r in result.task_results}


def test_in_process_one_liner_scores_like_the_model_does():
    with Embedder(settings=Settings(cache="off")) as embedder:
        result = mteb.evaluate(for_embedder(embedder), [TinyRetrieval(), TinySTS()], cache=None,
                               show_progress_bar=False)
    got = scores(result)
    assert got["TinyRetrieval"] >= 0.75 and got["TinySTS"] >= 0.7


def test_server_one_liner_gives_the_same_scores_as_in_process(tmp_path):
    with live_server(Settings(data_dir=tmp_path, cache="off")) as base:
        over_http = scores(mteb.evaluate(for_server(f"{base}/v1", "all-MiniLM-L6-v2"), [TinySTS()], cache=None,
                                         show_progress_bar=False))
    with Embedder(settings=Settings(cache="off")) as embedder:
        in_process = scores(mteb.evaluate(for_embedder(embedder), [TinySTS()], cache=None, show_progress_bar=False))
    assert over_http["TinySTS"] == pytest.approx(in_process["TinySTS"], abs=1e-6)


def test_queries_get_the_cards_task_instruction_documents_none_and_symmetric_tasks_follow_the_card():
    """Linq's card names an instruction for SciFact: queries carry it, documents are raw; TinySTS is not named."""
    card = find_card("linq-embed-mistral")
    config = ModelConfig(name="linq-embed-mistral", recipe="e5", weights=str(LINQ))
    with Embedder(config, settings=Settings(cache="off")) as embedder:
        encoder = for_embedder(embedder)
        mteb.evaluate(encoder, [SciFact(), TinySTS()], cache=None, show_progress_bar=False)
        seen = set(encoder.inputs_seen)
        assert ("query", card.task_instructions["SciFact"]) in seen
        assert ("document", None) in seen
        assert all(kind == "document" for kind, instruction in seen if instruction is None)
        # what mteb got for a query is what the Embedder gives for that query with that instruction
        query = "how much protein should an adult eat every day"
        direct = embedder.encode([query], input_type="query", instruction="SciFact", normalize=False)
        routed = encoder.target.embed([query], input_type="query", instruction=card.task_instructions["SciFact"])
        np.testing.assert_allclose(routed.vectors, direct, atol=1e-6)
