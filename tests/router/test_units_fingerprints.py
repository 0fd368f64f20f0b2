"""Vector fingerprints: agreement between providers, the short hash, and the reference group."""

from __future__ import annotations

import numpy as np
import pytest

from gigarouter.router.fingerprints import AGREEMENT, agree, fingerprint, largest_agreeing_group


def probe_vectors(seed: int, dim: int = 8) -> list[np.ndarray]:
    """A probe set's answer: blocks of 2, 1 and 3 vectors, as the real probe set has."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, dim)).astype(np.float32) for n in (2, 1, 3)]


def tilted(block: np.ndarray, cosine: float, row: int = 0) -> np.ndarray:
    """``block`` with one row turned so its cosine with the original is exactly ``cosine``."""
    out = np.array(block, dtype=np.float64)
    x = out[row] / np.linalg.norm(out[row])
    other = np.zeros_like(x)
    other[np.argmin(np.abs(x))] = 1.0
    other -= other.dot(x) * x
    other /= np.linalg.norm(other)
    out[row] = (cosine * x + np.sqrt(1 - cosine**2) * other) * np.linalg.norm(block[row])
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a.dot(b) / np.linalg.norm(a) / np.linalg.norm(b))


def test_the_same_vectors_agree_however_scaled():
    a = probe_vectors(1)
    assert agree(a, a)
    assert agree(a, [block * 3.5 for block in a])
    per_row = [block * np.arange(1, len(block) + 1, dtype=np.float32)[:, None] for block in a]
    assert agree(a, per_row)                 # each vector by its own factor


def test_opposite_vectors_do_not_agree():
    a = probe_vectors(1)
    assert not agree(a, [-block for block in a])


def test_a_width_change_does_not_agree():
    a = probe_vectors(1, dim=8)
    truncated = [block[:, :6] for block in a]
    assert not agree(a, truncated)
    assert not agree(truncated, a)
    assert not agree(probe_vectors(1, dim=8), probe_vectors(1, dim=16))


def test_a_different_number_of_blocks_or_rows_does_not_agree():
    a = probe_vectors(1)
    assert not agree(a, a[:2])
    assert not agree(a, [a[0], a[1], a[2][:2]])


@pytest.mark.parametrize(("cos", "expected"), [(0.9995, True), (0.99895, False), (0.99, False), (0.5, False)])
def test_one_perturbed_vector_decides(cos, expected):
    a = probe_vectors(2)
    b = [a[0], a[1], tilted(a[2], cos, row=1)]
    assert cosine(a[2][1], b[2][1]) == pytest.approx(cos, abs=1e-6)
    assert agree(a, b) is expected
    assert agree(b, a) is expected


def test_the_threshold_is_0_999_and_can_be_lowered():
    assert AGREEMENT == 0.999
    a = probe_vectors(3)
    b = [tilted(a[0], 0.99), a[1], a[2]]
    assert not agree(a, b)
    assert agree(a, b, threshold=0.98)


def test_fingerprint_is_stable_and_short():
    a = probe_vectors(4)
    copy = [block.copy() for block in a]
    assert fingerprint(a) == fingerprint(copy)
    assert len(fingerprint(a)) == 12 and int(fingerprint(a), 16) >= 0


def test_fingerprint_ignores_length_but_not_direction():
    a = probe_vectors(4)
    assert fingerprint(a) == fingerprint([block * 10 for block in a])
    assert fingerprint(a) != fingerprint(probe_vectors(5))
    assert fingerprint(a) != fingerprint([-block for block in a])


def test_fingerprint_differs_with_the_width():
    a = probe_vectors(4, dim=8)
    padded = [np.pad(block, ((0, 0), (0, 4))) for block in a]    # same values, four zero columns more
    assert fingerprint(a) != fingerprint(padded)
    assert fingerprint(a) != fingerprint([block[:, :4] for block in a])


def test_fingerprint_of_a_zero_vector_is_defined():
    blocks = [np.zeros((1, 4), dtype=np.float32)]
    assert fingerprint(blocks) == fingerprint([np.zeros((1, 4), dtype=np.float64)])
    assert fingerprint(blocks) != fingerprint([np.zeros((1, 5), dtype=np.float32)])


def test_the_largest_agreeing_group_wins():
    a, b = probe_vectors(6), probe_vectors(7)
    assert largest_agreeing_group([b, a, [block * 2 for block in a]]) == [1, 2]
    assert largest_agreeing_group([a, b, a, b, b]) == [1, 3, 4]


def test_ties_go_to_the_group_listed_first():
    a, b, c = probe_vectors(6), probe_vectors(7), probe_vectors(8)
    assert largest_agreeing_group([a, b]) == [0]
    assert largest_agreeing_group([b, a]) == [0]
    assert largest_agreeing_group([c, a, b, a, b]) == [1, 3]
    assert largest_agreeing_group([a]) == [0]
    assert largest_agreeing_group([]) == []
