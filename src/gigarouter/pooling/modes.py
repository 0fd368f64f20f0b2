"""Pooling modes, torch-free so recipes and the catalog can name them without importing torch."""

from __future__ import annotations

from enum import StrEnum


class PoolingMode(StrEnum):
    MEAN = "mean"
    LAST = "last"
    CLS = "cls"
