"""The engine: weights on a device, packed token batches in, one vector per sequence out."""

from gigarouter.engine.base import Engine, PackedBatch, pack

__all__ = ["Engine", "PackedBatch", "pack"]
