"""Compact vectors (int8, uint8, binary, ubinary) and the pooling of chunked windows."""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import quantize_embeddings

from gigarouter.pooling.encoding import finish, from_base64, pool_windows, quantize, to_base64


@pytest.fixture
def unit() -> np.ndarray:
    rng = np.random.default_rng(7)
    return finish(rng.standard_normal((5, 384)).astype(np.float32), dimensions=None, normalize=True)


@pytest.mark.parametrize("kind", ["binary", "ubinary"])
def test_bits_are_sentence_transformers_quantize_embeddings(unit, kind):
    ours = quantize(unit, kind)
    theirs = quantize_embeddings(unit, precision=kind)
    assert ours.dtype == theirs.dtype and ours.shape == (5, 48)
    np.testing.assert_array_equal(ours, theirs)


def test_bits_are_one_where_positive_msb_first():
    v = np.array([[0.5, -0.1, 0.0, 0.2, -0.3, 0.1, 0.1, -0.9, 0.4]], dtype=np.float32)
    # 1 0 0 1 0 1 1 0 -> 0b10010110 = 150; then 1 padded with zeros -> 0b10000000 = 128
    np.testing.assert_array_equal(quantize(v, "ubinary"), [[150, 128]])
    np.testing.assert_array_equal(quantize(v, "binary"), [[150 - 128, 0]])


def test_int8_is_a_fixed_scale_of_the_unit_vector(unit):
    q = quantize(unit, "int8")
    assert q.dtype == np.int8 and q.shape == unit.shape
    np.testing.assert_array_equal(q, np.rint(unit * 127).astype(np.int8))
    assert np.abs(q.astype(np.float64) / 127 - unit).max() <= 0.5 / 127 + 1e-7     # rounding, never clipping
    u = quantize(unit, "uint8")
    assert u.dtype == np.uint8
    np.testing.assert_array_equal(u.astype(np.int16), q.astype(np.int16) + 128)
    # extreme components of a unit vector still fit
    edge = np.array([[1.0, 0.0], [-1.0, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(quantize(edge, "int8"), [[127, 0], [-127, 0]])
    np.testing.assert_array_equal(quantize(edge, "uint8"), [[255, 128], [1, 128]])


def test_int8_dot_products_track_the_cosine(unit):
    q = quantize(unit, "int8").astype(np.float64)
    np.testing.assert_allclose(q @ q.T / 127**2, unit @ unit.T, atol=0.02)


def test_base64_is_the_raw_bytes(unit):
    for kind, dtype in (("int8", "i1"), ("uint8", "u1"), ("binary", "i1"), ("ubinary", "u1")):
        q = quantize(unit, kind)
        np.testing.assert_array_equal(from_base64(to_base64(q[0]), dtype), q[0])
    np.testing.assert_array_equal(from_base64(to_base64(unit[0])), unit[0])


def test_pool_windows_one_window_is_the_vector_itself_and_more_are_weighted():
    rng = np.random.default_rng(3)
    raw = rng.standard_normal((4, 6)).astype(np.float32) * 10
    out = pool_windows(raw, [[5], [100, 100, 20], ])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[0], raw[0])
    expected = (100 * raw[1].astype(np.float64) + 100 * raw[2] + 20 * raw[3]) / 220
    np.testing.assert_allclose(out[1], expected, rtol=1e-6)
