"""Optional packages and the extra that installs each, so a missing one is a one-line hint.

``pip install 'gigarouter[postgres]'`` brings psycopg; ``gigarouter[bench]`` the load
generator's plots and the reference libraries it compares with. A command that meets
one of these missing says which extra to install instead of showing a traceback.
"""

from __future__ import annotations

import importlib

#: Top-level module -> (the extra that installs it, what it is needed for).
EXTRAS: dict[str, tuple[str, str]] = {
    "psycopg": ("postgres", "PostgreSQL (database_url = \"postgresql://...\")"),
    "psycopg_binary": ("postgres", "PostgreSQL (database_url = \"postgresql://...\")"),
    "matplotlib": ("bench", "benchmark plots"),
    "sentence_transformers": ("bench", "the offline sentence-transformers comparison"),
    "httpx": ("bench", "the HTTP load generator"),
    "mteb": ("onboard", "gigarouter onboard's MTEB step (install torch first: docs/onboarding.md)"),
}


class MissingExtra(Exception):
    """An optional package is not installed; the message says which extra brings it."""

    def __init__(self, module: str) -> None:
        extra, purpose = EXTRAS[module]
        self.module, self.extra = module, extra
        super().__init__(f"{purpose} needs the Python package {module!r}, which is not installed: "
                         f"pip install 'gigarouter[{extra}]'")


def hint_for(exc: ImportError) -> MissingExtra | None:
    """The hint for an ImportError of an optional package, or None for anything else."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    return MissingExtra(name) if name in EXTRAS else None


def require(module: str) -> None:
    """Import ``module`` or raise MissingExtra naming the extra to install."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(module) from exc


def needs_psycopg(url: str | None) -> bool:
    """``postgres://``, ``postgresql://`` and ``postgresql+psycopg://`` all mean psycopg 3 here."""
    return bool(url) and url.split(":", 1)[0] in ("postgres", "postgresql", "postgresql+psycopg")
