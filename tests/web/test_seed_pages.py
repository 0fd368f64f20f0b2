"""Each seed model's page carries every fact its seed page states (shared/seeds/*.txt, copied here).

The facts are copied as expectations rather than read from ../shared at test
time, so the test stands on its own. Pages are compared on their visible text
(tags stripped, entities decoded, whitespace collapsed), so a table row reads
"Linq-Embed-Mistral 60.2 68.2" as it does on the seed page.
"""

from __future__ import annotations

from html.parser import HTMLParser

import httpx
import pytest

COMMON = [
    "skip to content",
    "gigarouter",
    "models / embeddings · coming soon",
    "API providers 0",
    "specs",
    "about this model",
    "FAQ",
    "not yet live",
    "related embeddings models",
    "compare all →",
]

LINQ = [
    "Linq-Embed-Mistral",
    "Linq-AI-Research/Linq-Embed-Mistral",
    "published May 2024 · updated Jun 2024",
    "Linq-Embed-Mistral is a text embedding model built on Mistral-7B, fine-tuned for high-performance retrieval, "
    "achieving top scores on the MTEB benchmark.",
    "est. price ~$0.008 / 1M tokens · estimated, set at launch",
    "downloads / mo 14.7K",
    "license CC-BY-NC-4.0",   # one format for licenses: SPDX ids (the seed says cc-by-nc-4.0)
    # specs
    "Task Text embedding & retrieval",
    "Architecture Mistral-7B transformer decoder with grouped-query attention and sliding window attention",
    "Parameters 7B",          # one format for parameters (the seed says 7 billion)
    # about
    "Linq-Embed-Mistral is an embedding model that generates high-quality text representations optimized for "
    "retrieval tasks, built upon the E5-mistral-7b-instruct and Mistral-7B-v0.1 foundations.",
    "The model improves text retrieval through advanced data refinement methods, including sophisticated data "
    "crafting, data filtering, and negative mining guided by teacher models, applied to both existing benchmark "
    "datasets and highly tailored synthetic datasets generated via LLMs.",
    "These techniques produce high-quality triplet datasets (query, positive example, negative example) that "
    "significantly enhance retrieval performance.",
    "Benchmark Performance",
    "On the Massive Text Embedding Benchmark (MTEB) as of May 29, 2024, Linq-Embed-Mistral achieves a retrieval "
    "score of 60.2, ranking first among all models on the MTEB leaderboard for the retrieval task.",
    "The model attains an average score of 68.2 across 56 datasets, making it the highest-ranking publicly "
    "accessible model and third overall.",
    "(NV-Embed-v1 and voyage-large-2-instruct, ranked 1st and 2nd overall, reported their performance without "
    "releasing their models.)",
    "The model uses a 7-billion-parameter architecture with grouped-query attention and sliding window attention, "
    "supporting a maximum sequence length of 4096 tokens.",
    "It requires a task-specific instruction prepended to each query at inference time.",
    "For detailed per-task MTEB results, refer to the model page on Hugging Face.",
    # benchmark table
    "Model Retrieval (15 datasets) Average (56 datasets)",
    "Linq-Embed-Mistral 60.2 68.2",
    "NV-Embed-v1 59.4 69.3",
    "SFR-Embedding-Mistral 59.0 67.6",
    "voyage-large-2-instruct 58.3 68.3",
    "GritLM-7B 57.4 66.8",
    "e5-mistral-7b-instruct 56.9 66.6",
    "text-embedding-3-large 55.4 64.6",
    # FAQ
    "What is Linq-Embed-Mistral best for?",
    "It excels at text retrieval tasks, outperforming most models on MTEB retrieval and averaging 68.2 across 56 "
    "datasets.",
    "How does Linq-Embed-Mistral compare to OpenAI text-embedding-3-large?",
    "Linq-Embed-Mistral achieves higher MTEB retrieval (60.2 vs 55.4) and average (68.2 vs 64.6) scores.",
    "What input format does the model require?",
    'Queries need a one-sentence task instruction prefixed with "Instruct: {task}\\nQuery: ". Passages do not '
    "require an instruction.",
    "How can I call Linq-Embed-Mistral via the gigarouter API?",
    "Use the OpenAI-compatible endpoint with your API key; send a POST request with input texts following the "
    "required instruction format.",
    "What is the maximum sequence length?",
    "The model supports up to 4096 tokens per input.",
    # status
    "We're benchmarking and onboarding Linq-Embed-Mistral as a hosted, OpenAI-compatible API. Sign in for free "
    "credit and be ready when it lands, or tell us you want it and we'll prioritize it.",
]

LLM2VEC = [
    "LLM2Vec Mistral 7B Instruct v2",
    "McGill-NLP/LLM2Vec-Mistral-7B-Instruct-v2-mntp-unsup-simcse",
    "published Apr 2024 · updated Apr 2024",
    "LLM2Vec Mistral 7B Instruct v2 is an embed model that converts a decoder-only LLM into a powerful text encoder "
    "using bidirectional attention and unsupervised contrastive learning.",
    "status coming soon",
    "downloads / mo 24.7K",
    "license MIT",
    # specs
    "Task Text embedding",    # one format for tasks: sentence case (the seed says Text Embedding)
    "Architecture Mistral 7B decoder-only with bidirectional attention",
    "Parameters 7B",
    "License MIT",
    "Max Sequence Length 512 tokens",
    # about
    "LLM2Vec-Mistral-7B-Instruct-v2-mntp-unsup-simcse is an embedding model that converts a decoder-only large "
    "language model into a text encoder for generating dense vector representations of text.",
    "Built on the LLM2Vec recipe, it transforms the base Mistral 7B Instruct v2 model through three steps: enabling "
    "bidirectional attention, masked next token prediction (MNTP), and unsupervised contrastive learning (SimCSE).",
    "The result is a universal text encoder that operates without requiring supervised data.",
    "Key strengths",
    "The model leverages the representational power of a 7B-parameter decoder-only LLM while adding bidirectional "
    "context, making it effective for semantic similarity, retrieval, and clustering tasks.",
    "The unsupervised SimCSE training aligns embeddings without labelled pairs, preserving the model's general "
    "language understanding.",
    "The approach is parameter-efficient, using LoRA adapters that are merged into the base model.",
    "Benchmark performance",
    "On the Massive Text Embeddings Benchmark (MTEB), LLM2Vec applied to Mistral 7B achieves a new unsupervised "
    "state-of-the-art performance.",
    "The model also outperforms encoder-only architectures on word-level tasks by a large margin, as demonstrated "
    "in the LLM2Vec paper (arXiv:2404.05961).",
    "These results confirm that decoder-only LLMs can be effectively repurposed as strong text encoders without "
    "expensive adaptation or synthetic data.",
    "Embedding methodology",
    "The model supports instruction-based encoding for queries and plain encoding for documents, with mean pooling "
    "and a maximum sequence length of 512 tokens.",
    "It is designed for use cases such as information retrieval, text classification, and semantic search.",
    "Hosted on Gigarouter, this model is available as an OpenAI-compatible API, eliminating the need for local "
    "infrastructure or manual model loading.",
    # FAQ
    "What is LLM2Vec Mistral 7B Instruct v2?",
    "It is an unsupervised text embedding model based on Mistral 7B, trained with the LLM2Vec recipe that enables "
    "bidirectional attention and masked next token prediction.",
    "How does it compare to other embedding models?",
    "It achieves state-of-the-art unsupervised performance on MTEB, outperforming encoder-only models on word-level "
    "tasks.",
    "What input format does it require?",
    "For queries, pass an instruction followed by the query string; for documents, pass only the document text. "
    "Encode with max 512 tokens.",
    "How can I use this model via API?",
    "Use gigarouter's OpenAI-compatible endpoint with a valid API key to send embedding requests.",
    # status
    "We're benchmarking and onboarding LLM2Vec Mistral 7B Instruct v2 as a hosted, OpenAI-compatible API. Sign in "
    "for free credit and be ready when it lands, or tell us you want it and we'll prioritize it.",
]

SEEDS = {"linq-embed-mistral": LINQ, "llm2vec-mistral-7b-instruct-v2": LLM2VEC}


class _Text(HTMLParser):
    """Visible text: every tag boundary is a space; script, style and head contents are dropped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in ("script", "style", "head", "title"):
            self._hidden += 1
        self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head", "title"):
            self._hidden -= 1
        self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def visible_text(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    parser.close()
    return " ".join("".join(parser.parts).split())


@pytest.mark.parametrize("slug", sorted(SEEDS))
def test_model_page_states_every_seed_fact(client: httpx.Client, slug: str) -> None:
    page = client.get(f"/models/{slug}")
    assert page.status_code == 200
    text = visible_text(page.text)
    missing = [fact for fact in COMMON + SEEDS[slug] if " ".join(fact.split()) not in text]
    assert not missing, f"/models/{slug} lacks: {missing}"


@pytest.mark.parametrize("slug", sorted(SEEDS))
def test_seed_model_pages_call_it_with_its_query_instruction(client: httpx.Client, slug: str) -> None:
    from gigarouter.catalog.cards import load_cards

    card = load_cards()[slug]
    text = visible_text(client.get(f"/models/{slug}").text)
    assert f'model="{slug}"' in text
    assert f'"instruction": "{card.default_query_instruction}"' in text   # curl and extra_body both show it
    assert 'extra_body={"input_type": "query", "instruction": ' in text


def test_related_models_and_compare_all_link(client: httpx.Client) -> None:
    page = client.get("/models/linq-embed-mistral").text
    for slug in ("llm2vec-mistral-7b-instruct-v2", "e5-mistral-7b-instruct", "sfr-embedding-mistral"):
        assert f'href="/models/{slug}"' in page
    assert ('href="/compare?models=linq-embed-mistral,llm2vec-mistral-7b-instruct-v2,e5-mistral-7b-instruct,'
            'sfr-embedding-mistral"') in page


def test_compare_shows_benchmark_scores_side_by_side(client: httpx.Client) -> None:
    chosen = "linq-embed-mistral,e5-mistral-7b-instruct,llm2vec-mistral-7b-instruct-v2"
    page = client.get("/compare", params={"models": chosen})
    text = visible_text(page.text)
    # Linq's own row, and e5-mistral's scores as reported in Linq's table; LLM2Vec reports none.
    assert "Retrieval (15 datasets) 60.2 (best) 56.9 —" in text
    assert "Average (56 datasets) 68.2 (best) 66.6 —" in text
    assert "License CC-BY-NC-4.0" in text and "Price / 1M tokens ~$0.008" in text
