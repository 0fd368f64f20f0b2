"""Pooling modes, torch-free so recipes and the catalog can name them without importing torch."""

from __future__ import annotations

from enum import Enum


class PoolingMode(str, Enum):
    MEAN = "mean"
    LAST = "last"
    CLS = "cls"
