"""Tiny MTEB tasks with local data (mteb's own task classes; nothing is downloaded).

``TinyRetrieval``: 4 queries over 8 passages, one relevant passage each; a real sentence
encoder ranks most of them first. ``TinySTS``: 6 pairs with human-style 0-5 scores, from a
paraphrase to unrelated. ``TinySciFact`` carries a name the Linq card has an instruction for
(SciFact), so the instruction routing shows. Registered with ``register_local_task``.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset, DatasetDict
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata

from gigarouter.onboarding.quality import register_local_task

_COMMON: dict[str, Any] = {
    "description": "A tiny local task for gigarouter's onboarding tests.",
    "reference": "https://github.com/embeddings-benchmark/mteb",
    "dataset": {"path": "local/tiny", "revision": "1"},
    "category": "t2t", "eval_splits": ["test"], "eval_langs": ["eng-Latn"], "date": ("2026-01-01", "2026-01-02"),
    "dialect": ["Written"], "domains": ["Encyclopaedic"], "task_subtypes": [], "license": "cc-by-4.0",
    "annotations_creators": "derived", "modalities": ["text"], "sample_creation": "created", "bibtex_citation": "",
}

QUERIES = {
    "q1": "how much protein should an adult eat every day",
    "q2": "what is the capital city of France",
    "q3": "how do plants turn sunlight into energy",
    "q4": "when did the first person walk on the moon",
}
CORPUS = {
    "d1": ("Protein", "Adults should eat about 0.8 grams of protein per kilogram of body weight each day."),
    "d2": ("Paris", "Paris is the capital and most populous city of France."),
    "d3": ("Photosynthesis", "Plants use photosynthesis to convert light energy into chemical energy."),
    "d4": ("Apollo 11", "Neil Armstrong became the first person to walk on the Moon in July 1969."),
    "d5": ("Rivers", "The Nile is one of the longest rivers in the world."),
    "d6": ("Football", "A football team has eleven players on the field."),
    "d7": ("Coffee", "Coffee beans are roasted seeds of the coffee plant."),
    "d8": ("Weather", "Snow falls when the air temperature is below freezing."),
}
RELEVANT = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}, "q4": {"d4": 1}}


def _retrieval_split() -> RetrievalSplitData:
    return RetrievalSplitData(
        queries=Dataset.from_list([{"id": k, "text": v} for k, v in QUERIES.items()]),
        corpus=Dataset.from_list([{"id": k, "title": t, "text": x} for k, (t, x) in CORPUS.items()]),
        relevant_docs=RELEVANT, top_ranked=None)


@register_local_task
class TinyRetrieval(AbsTaskRetrieval):
    metadata = TaskMetadata(type="Retrieval", name="TinyRetrieval", main_score="ndcg_at_10", **_COMMON)

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        self.dataset = {"default": {"test": _retrieval_split()}}
        self.data_loaded = True


@register_local_task
class SciFact(AbsTaskRetrieval):
    """Named like the MTEB task the cards have instructions for; local data all the same."""

    metadata = TaskMetadata(type="Retrieval", name="SciFact", main_score="ndcg_at_10", **_COMMON)

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        self.dataset = {"default": {"test": _retrieval_split()}}
        self.data_loaded = True


@register_local_task
class TinySTS(AbsTaskSTS):
    metadata = TaskMetadata(type="STS", name="TinySTS", main_score="cosine_spearman", **_COMMON)
    min_score = 0
    max_score = 5

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        pairs = [
            ("A man is playing a guitar.", "A man plays the guitar.", 5.0),
            ("A woman is slicing an onion.", "Someone is cutting an onion.", 4.2),
            ("The cat sleeps on the sofa.", "A cat is sleeping on a couch.", 4.6),
            ("Kids are playing football in the park.", "Children play in a park.", 3.0),
            ("The stock market fell sharply today.", "A dog runs across the beach.", 0.0),
            ("He is cooking pasta for dinner.", "The train arrives at noon.", 0.2),
        ]
        self.dataset = DatasetDict({"test": Dataset.from_dict({
            "sentence1": [a for a, _, _ in pairs], "sentence2": [b for _, b, _ in pairs],
            "score": [s for _, _, s in pairs]})})
        self.data_loaded = True
