"""A fake CUDA device on a CPU-only torch: FakeTensorMode tensors that say ``cuda`` and hold no data.

Every op runs its shape/dtype/device rules (the meta kernels, and the fake
implementation that ``torch.nn.attention.varlen`` registers for its op), so the
CUDA code paths execute for real in CI: a wrong argument, dtype or shape raises,
and so does any op whose result depends on the data (``.item()``, boolean
indexing, ``nonzero``, ``repeat_interleave`` without ``output_size``), i.e. every
place a pass would wait for the device. What cannot run without a GPU is the
copy from host to device; ``upload`` is replaced by a factory call that makes
a tensor of the same shape on the fake device (a fake tensor has no values to copy).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from gigarouter.engine import transfer

CUDA = torch.device("cuda:0")


def fake_upload(arrays: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: torch.empty(np.shape(a), dtype=torch.int64, device=device) for name, a in arrays.items()}


@contextmanager
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTensorMode]:
    monkeypatch.setattr(transfer, "upload", fake_upload)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        yield mode


class OpRecorder(TorchDispatchMode):
    """Every aten/custom op call under it, with its arguments (for asserting what a kernel was given)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple, dict]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.calls.append((str(func.overloadpacket.__name__), args, kwargs))
        return func(*args, **kwargs)

    def named(self, name: str) -> list[tuple[tuple, dict]]:
        return [(a, k) for n, a, k in self.calls if n == name]
