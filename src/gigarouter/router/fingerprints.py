"""Vector fingerprints: do two providers of "the same model" put text in the same vector space?

Every provider of a route embeds a fixed probe set (queries with and without
instructions, documents, unicode, a one-character input). Two providers agree
when every probe vector has cosine >= ``AGREEMENT`` with the other's and the
widths are equal. A fingerprint is a short hash of the width and the rounded
probe vectors, shown per provider; the route's fingerprint is its reference's,
and names the vector space a client's index lives in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

AGREEMENT = 0.999


@dataclass(frozen=True)
class Probe:
    texts: tuple[str, ...]
    input_type: str = "document"
    instruction: str | None = None


PROBES = (
    Probe(("what is a llama?", "how do vaccines teach the immune system"), input_type="query"),
    Probe(("capital of France",), input_type="query",
          instruction="Given a web search query, retrieve relevant passages that answer the query"),
    Probe(("The llama is a domesticated South American camelid, used as a pack animal by Andean cultures.",
           "Zürich, 東京, Москва: naïve café – 🦙 ∑ x² ≠ ∞", "a")),
)


def fingerprint(vectors: Sequence[np.ndarray]) -> str:
    """A short hash of the probe vectors (unit length, rounded to 2 decimals) and their width."""
    digest = hashlib.sha256()
    for block in vectors:
        unit = _unit(block)
        digest.update(str(unit.shape[1]).encode())
        digest.update((np.round(unit, 2) + 0.0).astype("<f4").tobytes())   # + 0.0: no -0.0
    return digest.hexdigest()[:12]


def agree(a: Sequence[np.ndarray], b: Sequence[np.ndarray], *, threshold: float = AGREEMENT) -> bool:
    """Same widths, and every probe vector of ``a`` within ``threshold`` cosine of ``b``'s."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x.shape != y.shape:
            return False
        if float(np.min(np.sum(_unit(x) * _unit(y), axis=1))) < threshold:
            return False
    return True


def largest_agreeing_group(candidates: Sequence[Sequence[np.ndarray]]) -> list[int]:
    """Indices of the largest group that agrees with its first member (ties: the one listed first)."""
    best: list[int] = []
    for head in candidates:
        group = [j for j, other in enumerate(candidates) if agree(head, other)]
        if len(group) > len(best):
            best = group
    return best


def _unit(block: np.ndarray) -> np.ndarray:
    block = np.asarray(block, dtype=np.float64)
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    return block / np.where(norms == 0, 1.0, norms)
