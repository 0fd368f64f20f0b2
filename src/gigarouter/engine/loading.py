"""Weights from disk onto a model built on the meta device.

The model is constructed under ``torch.device("meta")`` (no memory, no random
init); each tensor is taken from its safetensors file and assigned with
``load_state_dict(..., assign=True)``, one tensor at a time, so no second copy
of the model ever exists. Two ways to take a tensor:

- zero-copy: on CPU, when the file already holds the wanted dtype, the tensor
  is a view of a private (copy-on-write) memory map of the file. The weights are
  the page cache itself: nothing is copied, pages come in as the model touches
  them, processes serving the same file share them, and a LoRA merge that
  writes a weight gets its own copy of just those pages.
- read: otherwise (another device or dtype) the bytes are read with plain file
  I/O into a fresh buffer, cast or moved, and the buffer dropped, so host memory
  holds at most one tensor beyond the model itself.

Peak host memory while loading a bf16 checkpoint in bf16 is about 1.01x the
checkpoint on either path (``python -m gigarouter.bench.load_memory``; the test
in tests/engine/test_load_memory.py holds it under 1.25x).
"""

from __future__ import annotations

import json
import mmap
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gigarouter.errors import ModelLoadError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def safetensors_files(checkpoint_dir: Path) -> list[Path]:
    """The checkpoint's weight files: the index's shards, or the single file."""
    index = checkpoint_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [checkpoint_dir / name for name in sorted(set(weight_map.values()))]
    single = checkpoint_dir / "model.safetensors"
    if single.exists():
        return [single]
    raise ModelLoadError(f"no model.safetensors or model.safetensors.index.json in {checkpoint_dir}")


def read_config(checkpoint_dir: Path) -> dict:
    path = checkpoint_dir / "config.json"
    if not path.exists():
        raise ModelLoadError(f"no config.json in {checkpoint_dir}")
    return json.loads(path.read_text())


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int          # absolute byte offsets in the file
    end: int


class SafetensorsFile:
    """A safetensors file read lazily: the header now, each tensor on request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._map: mmap.mmap | None = None
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        header.pop("__metadata__", None)
        start = 8 + header_len
        self.tensors: dict[str, TensorInfo] = {}
        for name, meta in header.items():
            if meta["dtype"] not in DTYPES:
                raise ModelLoadError(f"{path.name}: tensor {name!r} has unsupported dtype {meta['dtype']}")
            b, e = meta["data_offsets"]
            self.tensors[name] = TensorInfo(DTYPES[meta["dtype"]], tuple(meta["shape"]), start + b, start + e)

    def keys(self) -> list[str]:
        return list(self.tensors)

    def get(self, name: str, *, dtype: torch.dtype | None = None, device: torch.device | str = "cpu",
            zero_copy: bool = True) -> torch.Tensor:
        """The tensor ``name`` as ``dtype`` on ``device`` (a file-backed view where that is possible)."""
        info = self.tensors[name]
        dtype = dtype or info.dtype
        device = torch.device(device)
        if zero_copy and device.type == "cpu" and dtype == info.dtype and self._aligned(info):
            return self._view(info)
        return self._read(info).to(device=device, dtype=dtype)

    def _aligned(self, info: TensorInfo) -> bool:
        return info.begin % info.dtype.itemsize == 0

    def _view(self, info: TensorInfo) -> torch.Tensor:
        if self._map is None:
            with open(self.path, "rb") as f:
                # ACCESS_COPY = MAP_PRIVATE: writable, and writes never reach the file.
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        count = (info.end - info.begin) // info.dtype.itemsize
        if count == 0:
            return torch.empty(info.shape, dtype=info.dtype)
        flat = torch.frombuffer(self._map, dtype=info.dtype, count=count, offset=info.begin)
        return flat.view(info.shape)

    def _read(self, info: TensorInfo) -> torch.Tensor:
        buf = torch.empty(info.end - info.begin, dtype=torch.uint8)
        with open(self.path, "rb", buffering=0) as f:
            f.seek(info.begin)
            view = memoryview(buf.numpy())
            got = 0
            while got < len(view):
                n = f.readinto(view[got:])
                if not n:
                    raise ModelLoadError(f"{self.path.name}: file ends inside a tensor (truncated download?)")
                got += n
        return buf.view(info.dtype).view(info.shape)


def iter_tensors(paths: list[Path], *, keep: Callable[[str], bool], dtype: torch.dtype | None,
                 device: torch.device | str, zero_copy: bool = True) -> Iterator[tuple[Path, str, torch.Tensor]]:
    """Every tensor ``keep`` wants from ``paths``, one at a time, file by file."""
    for path in paths:
        try:
            f = SafetensorsFile(path)
        except (OSError, ValueError, KeyError, struct.error) as exc:
            raise ModelLoadError(f"cannot read {path}: {exc}") from exc
        for name in f.keys():
            if keep(name):
                yield path, name, f.get(name, dtype=dtype, device=device, zero_copy=zero_copy)


def load_weights(model: nn.Module, checkpoint_dir: Path, *, dtype: torch.dtype, device: torch.device,
                 checkpoint_key: Callable[[str], str | None], zero_copy: bool = True) -> None:
    """Fill a meta-device ``model`` from the safetensors in ``checkpoint_dir``.

    ``checkpoint_key`` maps a checkpoint tensor name to the model's parameter name,
    or None to skip it. Every model parameter must be found. ``zero_copy=False``
    forces the read path even where a file-backed view would do (tests, benchmarks).
    """
    expected = {name for name, _ in model.named_parameters()}
    seen: set[str] = set()
    tensors = iter_tensors(safetensors_files(checkpoint_dir), keep=lambda n: checkpoint_key(n) is not None,
                           dtype=dtype, device=device, zero_copy=zero_copy)
    for path, name, tensor in tensors:
        key = checkpoint_key(name)
        if key not in expected:
            raise ModelLoadError(f"{path.name}: unexpected tensor {name!r}")
        if key in seen:
            raise ModelLoadError(f"{path.name}: tensor {name!r} appears twice in {checkpoint_dir}")
        # One tensor at a time: assign=True keeps this very tensor, no copy.
        try:
            model.load_state_dict({key: tensor}, strict=False, assign=True)
        except RuntimeError as exc:  # shape mismatch: config.json and weights disagree
            raise ModelLoadError(f"{path.name}: {name!r} does not fit the model: {exc}") from None
        seen.add(key)
    missing = expected - seen
    if missing:
        raise ModelLoadError(f"checkpoint {checkpoint_dir} lacks {len(missing)} tensors, e.g. {sorted(missing)[:3]}")
