"""gigarouter: an OpenAI-compatible embeddings service for LLM-based embedding models.

The in-process entry point is :class:`gigarouter.Embedder`; the service is
``gigarouter serve`` (see :mod:`gigarouter.cli`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gigarouter.embedder import Embedder

__all__ = ["Embedder"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy, so that `gigarouter keys list` and other torch-free commands start fast.
    if name == "Embedder":
        from gigarouter.embedder import Embedder

        return Embedder
    raise AttributeError(f"module 'gigarouter' has no attribute {name!r}")
