"""What happens to a pooled vector on its way out: dimensions, normalisation, encoding."""

from __future__ import annotations

import base64

import numpy as np


def finish(vectors: np.ndarray, *, dimensions: int | None, normalize: bool) -> np.ndarray:
    """Truncate to ``dimensions`` (Matryoshka style) and L2-normalise. vectors: [n, dim] float32."""
    if dimensions is not None:
        vectors = vectors[:, :dimensions]
    if normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def to_base64(vector: np.ndarray) -> str:
    """Little-endian float32 bytes, base64: what OpenAI sends for encoding_format=base64."""
    return base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode("ascii")


def from_base64(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4")
