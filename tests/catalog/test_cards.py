"""The seed models' cards carry every fact their pages state; the e5-family cards are complete."""

from __future__ import annotations

from pathlib import Path

import pytest

from gigarouter.catalog.cards import find_card, load_cards

SEEDS = Path(__file__).resolve().parents[2].parent / "shared" / "seeds"


def card_text(slug: str) -> str:
    card = load_cards()[slug]
    parts = [card.display_name, card.hub_id, card.summary, card.about, card.license, card.task, card.architecture,
             card.parameters, card.status, card.status_note, *card.extra_specs.values()]
    parts += [f"{f.question}\n{f.answer}" for f in card.faq]
    return "\n".join(parts)


def test_linq_card_facts():
    card = load_cards()["linq-embed-mistral"]
    assert (card.display_name, card.hub_id, card.license) == (
        "Linq-Embed-Mistral", "Linq-AI-Research/Linq-Embed-Mistral", "cc-by-nc-4.0")
    assert (card.published, card.updated, card.parameters, card.max_tokens) == ("2024-05", "2024-06", "7 billion", 4096)
    assert (card.price_per_million_usd, card.price_estimated, card.downloads_per_month) == (0.008, True, 14_700)
    assert (card.recipe, card.dimensions, card.api_providers, card.status) == ("e5", 4096, 0, "coming soon")
    assert card.benchmark_columns == ("Retrieval (15 datasets)", "Average (56 datasets)")
    rows = {b.model: tuple(b.scores[c] for c in card.benchmark_columns) for b in card.benchmarks}
    assert rows == {"Linq-Embed-Mistral": (60.2, 68.2), "NV-Embed-v1": (59.4, 69.3),
                    "SFR-Embedding-Mistral": (59.0, 67.6), "voyage-large-2-instruct": (58.3, 68.3),
                    "GritLM-7B": (57.4, 66.8), "e5-mistral-7b-instruct": (56.9, 66.6),
                    "text-embedding-3-large": (55.4, 64.6)}
    assert len(card.faq) == 5


def test_llm2vec_card_facts():
    card = load_cards()["llm2vec-mistral-7b-instruct-v2"]
    assert card.hub_id == "McGill-NLP/LLM2Vec-Mistral-7B-Instruct-v2-mntp-unsup-simcse"
    assert (card.display_name, card.license, card.published, card.updated) == (
        "LLM2Vec Mistral 7B Instruct v2", "mit", "2024-04", "2024-04")
    assert (card.parameters, card.max_tokens, card.recipe, card.downloads_per_month) == ("7B", 512, "llm2vec", 24_700)
    assert card.extra_specs == {"License": "MIT", "Max Sequence Length": "512 tokens"}
    assert card.status == "coming soon" and card.api_providers == 0 and len(card.faq) == 4
    assert "arXiv:2404.05961" in card.about


@pytest.mark.parametrize(("slug", "seed"), [("linq-embed-mistral", "linq-embed-mistral.txt"),
                                             ("llm2vec-mistral-7b-instruct-v2", "llm2vec-mistral-7b-instruct-v2.txt")])
def test_every_paragraph_of_the_seed_page_is_on_the_card(slug, seed):
    """Each prose line of the page (description, about, FAQ, status) appears verbatim on the card."""
    page = SEEDS / seed
    if not page.exists():
        pytest.skip(f"seed pages not checked out beside the repository ({page})")
    text = card_text(slug)
    labels = ("Task", "Architecture", "Parameters", "License", "Max Sequence Length")   # spec rows: label+value
    lines = [next((line[len(lb):] for lb in labels if line.startswith(lb)), line)
             for line in page.read_text(encoding="utf-8").splitlines()]
    prose = [line for line in lines if len(line) > 40 and not line.startswith("Model")]   # table head: checked above
    missing = [line for line in prose if line not in text]
    assert not missing


def test_default_and_named_instructions_follow_each_reference():
    llm2vec = load_cards()["llm2vec-mistral-7b-instruct-v2"].instructions
    linq = load_cards()["linq-embed-mistral"].instructions
    msmarco = "Given a web search query, retrieve relevant passages that answer the query"
    assert llm2vec.resolve("query", None) == msmarco + ":"          # llm2vec's strings end with ":"
    assert linq.resolve("query", None) == msmarco                   # the e5 / Linq card's do not
    assert llm2vec.resolve("query", "NQ") == "Given a question, retrieve Wikipedia passages that answer the question:"
    assert linq.resolve("query", "NQ") == "Given a question, retrieve Wikipedia passages that answer the question"
    assert linq.resolve("query", "Find the answer") == "Find the answer"
    assert linq.resolve("document", "NQ") is None and llm2vec.resolve("document", None) is None
    for name, instruction in load_cards()["llm2vec-mistral-7b-instruct-v2"].task_instructions.items():
        assert instruction.endswith(":"), name
        if name in load_cards()["linq-embed-mistral"].task_instructions:
            assert load_cards()["linq-embed-mistral"].task_instructions[name] + ":" == instruction


@pytest.mark.parametrize(("name", "slug", "license_"), [
    ("intfloat/e5-mistral-7b-instruct", "e5-mistral-7b-instruct", "mit"),
    ("Salesforce/SFR-Embedding-Mistral", "sfr-embedding-mistral", "cc-by-nc-4.0"),
    ("Linq-Embed-Mistral", "linq-embed-mistral", "cc-by-nc-4.0"),
    ("McGill-NLP/LLM2Vec-Mistral-7B-Instruct-v2-mntp-unsup-simcse", "llm2vec-mistral-7b-instruct-v2", "mit"),
])
def test_cards_are_found_by_hub_id_and_show_a_license(name, slug, license_):
    card = find_card(name)
    assert card is not None and card.slug == slug and card.license == license_
    assert card.max_tokens and card.dimensions == 4096 and card.default_query_instruction
    assert all(r in load_cards() for r in card.related)
