"""What happens to a pooled vector on its way out: windows pooled, dimensions, normalisation, encoding.

Order, for every wire protocol: the raw float32 vectors a provider (or the cache) gave ->
``pool_windows`` (``truncate: "chunk"`` only) -> ``finish`` (``dimensions``, then L2
normalisation) -> ``quantize`` (compact types) -> float JSON or base64 of the bytes.

Compact types (``EMBEDDING_TYPES``), the names Cohere uses:

- ``int8``: ``clip(round(127 * x), -127, 127)`` of the *unit* vector. A fixed scale, the
  same for every vector, so the same input always gives the same bytes, nothing needs
  calibration data, and the dot product of two int8 vectors is 127² times their cosine up to
  rounding (a vector store can rank with integer dot products). Components of a unit vector
  lie in [-1, 1], so nothing is ever clipped. It asks for ``normalize: true``.
- ``uint8``: the int8 value + 128, in [1, 255] (the same grid, shifted).
- ``binary`` / ``ubinary``: one bit per component, 1 where it is > 0, packed 8 to a byte,
  most significant bit first (``numpy.packbits``); ``ubinary`` is the byte as uint8,
  ``binary`` the same byte - 128 as int8: sentence-transformers' ``quantize_embeddings``
  convention (and Cohere's). A width that is not a multiple of 8 is padded with 0 bits.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np

EMBEDDING_TYPES = ("float", "int8", "uint8", "binary", "ubinary")
#: The types whose scale assumes a unit vector.
CALIBRATED_TYPES = ("int8", "uint8")
INT8_SCALE = 127


def pool_windows(vectors: np.ndarray, windows: Sequence[Sequence[int]]) -> np.ndarray:
    """One vector per input from its windows' vectors, weighted by each window's token count.

    vectors: [sum of windows, dim] float32 as providers return them (not normalised), in window
    order; windows[i]: the token weights of input i's windows. An input of one window gets its
    window's vector bit for bit (no arithmetic touches it).
    """
    out = np.empty((len(windows), vectors.shape[1]), dtype=np.float32)
    row = 0
    for i, weights in enumerate(windows):
        count = len(weights)
        if count == 1:
            out[i] = vectors[row]
        else:
            w = np.asarray(weights, dtype=np.float64)
            out[i] = (w @ vectors[row:row + count].astype(np.float64)) / w.sum()
        row += count
    return out


def finish(vectors: np.ndarray, *, dimensions: int | None, normalize: bool) -> np.ndarray:
    """Truncate to ``dimensions`` (Matryoshka style) and L2-normalise. vectors: [n, dim] float32."""
    if dimensions is not None:
        vectors = vectors[:, :dimensions]
    if normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def quantize(vectors: np.ndarray, embedding_type: str) -> np.ndarray:
    """Finished float32 vectors [n, dim] -> the compact type's array: [n, dim] int8/uint8, [n, ceil(dim/8)] bits."""
    if embedding_type == "float":
        return vectors
    if embedding_type in CALIBRATED_TYPES:
        q = np.clip(np.rint(vectors * INT8_SCALE), -INT8_SCALE, INT8_SCALE).astype(np.int16)
        return q.astype(np.int8) if embedding_type == "int8" else (q + 128).astype(np.uint8)
    packed = np.packbits(vectors > 0, axis=1)                         # [n, ceil(dim / 8)] uint8
    if embedding_type == "ubinary":
        return packed
    if embedding_type == "binary":
        return (packed.astype(np.int16) - 128).astype(np.int8)
    raise ValueError(f"unknown embedding type {embedding_type!r}")


def to_base64(vector: np.ndarray) -> str:
    """The vector's raw bytes, base64. Float32 little-endian for floats (what OpenAI sends for
    encoding_format=base64); one byte per value for the compact types."""
    if vector.dtype.kind == "f":
        vector = vector.astype("<f4", copy=False)
    return base64.b64encode(vector.tobytes()).decode("ascii")


def from_base64(text: str, dtype: str = "<f4") -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype)


def to_json(vectors: np.ndarray) -> np.ndarray:
    """What goes into the JSON: each float32 as its exact float64 value (as OpenAI does), so a client
    parsing the JSON gets bit for bit the numbers base64 would have given it; integers as they are."""
    return vectors.astype(np.float64) if vectors.dtype.kind == "f" else vectors
