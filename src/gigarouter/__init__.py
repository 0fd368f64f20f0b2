"""gigarouter: an OpenAI-compatible embeddings service for LLM-based embedding models.

The in-process entry point is :class:`gigarouter.Embedder`; the service is
``gigarouter serve`` (see :mod:`gigarouter.cli`).
"""

from gigarouter.embedder import Embedder

__all__ = ["Embedder"]
__version__ = "0.1.0"
