"""Benchmark inputs, generated deterministically (seeded, no downloads).

``mixed_corpus`` resembles an MS MARCO retrieval workload: short queries
(about 5 words, ~9 tokens with specials) and passages (about 70 words,
~40-250 tokens, ~80 on average), built from a fixed English word list with a Zipf-like word
frequency. ``texts_with_tokens`` makes inputs of a chosen token length for a
given tokenizer, and ``random_sequences`` makes token-id sequences of exact
lengths for the engine, which needs no text at all.

``TokenCounter`` counts what a BERT-style model sees (special tokens added,
capped at the model's limit) with the ``tokenizers`` library only, so a load
generator can count tokens the same way for every server it drives.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_WORDS = """
the of and to a in is for that on with as it by are this be from at or an was have not which more can
their has all will one you about also other they been new information were but its may these time
when there would if your such use any some than people only first used most what data over water into
system between each number two world life health work year years city state where day body because
many different found both river high company during school free part long energy small support body
under following based country power history well south while north should air value research light
common service general development process known including often called form early family order how
great large include place music area why food human land study team plant blood cell level market
model change cost range price does make best type must known public rate low design process growth heat
control local home three product group market second family disease pain skin heart cause symptoms
treatment doctor patient medical drug effect risk test result level normal daily average minimum
money bank account tax income pay salary credit loan insurance card business job career degree college
university student class course program science math history art language english word meaning define
definition name term example sentence phrase letter book story author film movie song album season
episode game player sport football baseball ball field coach league win record car engine road travel
flight airport hotel trip island beach mountain lake ocean weather temperature rain snow wind climate
summer winter spring month week hour minute phone computer software internet website email password
network device screen battery file video image camera code error version update install windows apple
google window door room house kitchen wall floor paint wood metal glass stone paper plastic cotton
animal dog cat bird fish horse tree flower seed fruit apple orange coffee tea milk sugar salt bread
chicken beef egg rice cheese cook bake recipe meal diet weight protein vitamin calories exercise sleep
law court legal contract rights government president election party vote policy military war army
church religion god ancient century period modern culture population region county capital border
""".split()
_WORDS = list(dict.fromkeys(_WORDS))   # stable order, no repeats

_QUESTION_STARTS = ("what is", "how to", "how much", "how long", "what are", "who is", "when did",
                    "where is", "why do", "define", "can you", "is there", "what does", "how many")

#: MS MARCO-like shape: ~50% short queries, ~50% passages (by count; passages dominate by tokens).
QUERY_FRACTION = 0.5


@dataclass(frozen=True)
class Corpus:
    name: str
    texts: tuple[str, ...]
    kinds: tuple[str, ...]      # "query" or "passage", per text
    seed: int

    def __len__(self) -> int:
        return len(self.texts)

    def of_kind(self, kind: str) -> tuple[str, ...]:
        return tuple(t for t, k in zip(self.texts, self.kinds, strict=True) if k == kind)


def _word_sampler(rng: np.random.Generator) -> Callable[[int], list[str]]:
    ranks = np.arange(len(_WORDS))
    p = 1.0 / (ranks + 8.0)     # Zipf-like: frequent words dominate, the tail still shows up
    p /= p.sum()

    def draw(n: int) -> list[str]:
        return [_WORDS[i] for i in rng.choice(len(_WORDS), size=n, p=p)]
    return draw


def _query(rng: np.random.Generator, draw: Callable[[int], list[str]]) -> str:
    n = int(np.clip(round(rng.lognormal(np.log(4.5), 0.45)), 1, 18))
    start = _QUESTION_STARTS[rng.integers(len(_QUESTION_STARTS))] if rng.random() < 0.6 else ""
    text = " ".join([start, *draw(n)]).strip()
    return text + ("?" if start and rng.random() < 0.3 else "")


def _passage(rng: np.random.Generator, draw: Callable[[int], list[str]]) -> str:
    n = int(np.clip(round(rng.lognormal(np.log(62.0), 0.5)), 15, 220))
    sentences, left = [], n
    while left > 0:
        k = int(min(left, max(4, rng.normal(14, 5))))
        words = draw(k)
        if rng.random() < 0.15:
            words[rng.integers(k)] = str(int(rng.integers(1, 2030)))
        sentences.append(" ".join(words).capitalize() + ".")
        left -= k
    return " ".join(sentences)


def mixed_corpus(n: int = 2048, *, seed: int = 0, query_fraction: float = QUERY_FRACTION) -> Corpus:
    """``n`` texts, queries and passages interleaved at random (same seed, same corpus)."""
    rng = np.random.default_rng(seed)
    draw = _word_sampler(rng)
    texts, kinds = [], []
    for _ in range(n):
        if rng.random() < query_fraction:
            texts.append(_query(rng, draw))
            kinds.append("query")
        else:
            texts.append(_passage(rng, draw))
            kinds.append("passage")
    return Corpus(name=f"msmarco-like-mix-{n}-seed{seed}", texts=tuple(texts), kinds=tuple(kinds), seed=seed)


def texts_with_tokens(tokens: int, n: int, count: Callable[[str], int], *, seed: int = 0) -> list[str]:
    """``n`` texts that each count ``tokens`` (or the nearest reachable count) under ``count``.

    Words are added one at a time; a word that would overshoot is swapped for
    shorter ones, so the count lands exactly on target for any WordPiece/BPE
    tokenizer over this word list in practice.
    """
    rng = np.random.default_rng(seed + 7919 * tokens)
    draw = _word_sampler(rng)
    out = []
    for _ in range(n):
        words: list[str] = []
        for _attempt in range(20 * tokens + 50):
            have = count(" ".join(words)) if words else count("")
            if have >= tokens:
                break
            candidate = draw(1)[0]
            if count(" ".join([*words, candidate])) <= tokens:
                words.append(candidate)
        out.append(" ".join(words))
    return out


def random_sequences(lengths: Sequence[int], *, vocab_size: int, seed: int = 0, low: int = 3) -> list[list[int]]:
    """Token-id sequences of exactly the given lengths (ids in [low, vocab_size))."""
    rng = np.random.default_rng(seed)
    return [rng.integers(low, vocab_size, size=int(n)).tolist() for n in lengths]


class TokenCounter:
    """Tokens a model sees per input: specials included, capped at ``max_tokens`` (None = no cap)."""

    def __init__(self, tokenizer_json: Path, *, max_tokens: int | None) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(tokenizer_json))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.max_tokens = max_tokens

    @classmethod
    def for_model_dir(cls, model_dir: Path, *, cap: bool = True) -> TokenCounter:
        limit = None
        st_config = Path(model_dir) / "sentence_bert_config.json"
        if cap and st_config.exists():
            limit = json.loads(st_config.read_text())["max_seq_length"]
        return cls(Path(model_dir) / "tokenizer.json", max_tokens=limit)

    def count(self, text: str) -> int:
        return self.counts([text])[0]

    def counts(self, texts: Sequence[str]) -> list[int]:
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=True)
        lengths = [len(e.ids) for e in encodings]
        return lengths if self.max_tokens is None else [min(n, self.max_tokens) for n in lengths]

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids with specials; a capped sequence keeps its last (special) token."""
        out = []
        for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=True):
            ids = e.ids
            if self.max_tokens is not None and len(ids) > self.max_tokens:
                ids = ids[: self.max_tokens - 1] + ids[-1:]
            out.append(ids)
        return out


def length_summary(lengths: Sequence[int]) -> dict[str, float]:
    a = np.asarray(lengths, dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    return {"n": int(a.size), "mean": float(a.mean()), "p10": float(np.percentile(a, 10)),
            "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "max": float(a.max()), "total": float(a.sum())}
