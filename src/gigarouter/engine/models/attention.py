"""Attention over packed (padding-free) sequences, on the path chosen once per engine.

The model keeps activations packed, ``[total_tokens, ...]``; only attention
needs to know where sequences begin and end. ``AttentionLayout`` is built once
per forward pass, on the host, from the host copy of ``cu_seqlens``: every size
(tokens, sequences, longest) is a Python int and every index tensor arrives in
one non-blocking copy (``engine/transfer.py``), so nothing in a pass waits for
the device.

Two paths; which one a model runs is decided once, when the engine is built
(``select_attention``), logged, and never changed afterwards. A path that
fails raises: there is no silent fallback from one to the other.

``grid`` (CPU, and any device without the varlen kernel): sequences are sorted
by length and cut into buckets of similar length; each bucket is gathered into
its own ``[m, longest]`` grid, run through ``scaled_dot_product_attention``
with a key mask (plus causal / sliding window) where a sequence is shorter
than the bucket's longest, and scattered back. Grouped-query K/V heads are
repeated to the query heads first (``enable_gqa`` with a mask sends CUDA to the
math kernel, which builds the whole fp32 score matrix); on CUDA the math kernel
is excluded outright, so a shape no fused kernel takes fails instead of
quietly allocating ``[m, heads, L, L]`` floats.

``varlen`` (CUDA, fp16/bf16): PyTorch's varlen flash-attention kernel reads the
packed tensors directly with ``cu_seqlens``: no grid, no mask, no padding
FLOPs, grouped-query attention inside the kernel. ``VarlenKernel`` adapts to
the signature of the installed torch (``window_size``/``enable_gqa`` arrived
after ``varlen_attn`` itself).
"""

from __future__ import annotations

import inspect
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gigarouter.engine import transfer
from gigarouter.engine.transfer import host_ints

log = logging.getLogger(__name__)

GRID = "grid"
VARLEN = "varlen"
PATHS = (GRID, VARLEN)

# A sequence joins a bucket while it is at least this fraction of the bucket's longest:
# padding stays under ~35% of a bucket's attention work, and a typical mixed batch needs
# only a handful of grids (each SDPA call has a fixed cost).
BUCKET_MIN_FRACTION = 0.8

#: attend() calls per path in this process (one per layer per pass): benchmarks read it
#: to prove which path ran.
PATH_CALLS: Counter[str] = Counter()


@dataclass(frozen=True)
class Bucket:
    """Sequences of similar length that share one attention grid."""

    count: int
    longest: int
    gather: torch.Tensor         # [count * longest] packed row of each grid cell (0 where padding)
    keep: torch.Tensor           # [valid cells] grid cells that hold a real token
    scatter: torch.Tensor        # [valid cells] packed row each kept cell goes back to
    mask: torch.Tensor | None    # [count, 1, longest, longest] bool, None = no mask needed


def bucket_groups(lengths: Sequence[int]) -> list[list[int]]:
    """Indices of the sequences in each bucket, longest first (host only)."""
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if groups and lengths[i] >= BUCKET_MIN_FRACTION * lengths[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


@dataclass(frozen=True)
class AttentionLayout:
    num_sequences: int
    max_len: int
    pos_in_seq: torch.Tensor     # [T] position of each token inside its sequence
    causal: bool
    cu_seqlens: torch.Tensor     # [n+1] int32: sequence i is rows cu[i]:cu[i+1]
    window: int | None = None    # sliding window (query i sees keys j with i - j < window)
    path: str = GRID
    buckets: tuple[Bucket, ...] = ()   # the grids of the grid path (empty on the varlen path)
    num_tokens: int = 0

    @classmethod
    def build(cls, cu_seqlens, *, causal: bool, window: int | None = None, path: str = GRID,
              device: torch.device | str | None = None) -> AttentionLayout:
        """The layout of one pass. ``cu_seqlens``: the host copy (numpy, list or CPU tensor).

        ``device``: where the pass runs (default: where ``cu_seqlens`` is). A device
        tensor works too, at the price of one copy back to the host.
        """
        if path not in PATHS:
            raise ValueError(f"unknown attention path {path!r}; one of {', '.join(PATHS)}")
        if device is None:
            device = cu_seqlens.device if isinstance(cu_seqlens, torch.Tensor) else "cpu"
        device = torch.device(device)
        cu = host_ints(cu_seqlens)
        lengths = np.diff(cu)
        n, total = len(lengths), int(cu[-1])
        max_len = int(lengths.max())
        arrays = {"pos_in_seq": np.arange(total, dtype=np.int64) - np.repeat(cu[:-1], lengths), "cu": cu}
        plans = []
        if path == GRID:
            for b, group in enumerate(bucket_groups(lengths.tolist())):
                plan = _bucket_plan(cu[group], lengths[group], window=window)
                plans.append(plan)
                arrays.update({f"{b}.{key}": value for key, value in plan.items() if key != "mask"})
        dev = transfer.upload(arrays, device)
        buckets = tuple(_bucket(dev, b, plan, causal=causal, window=window) for b, plan in enumerate(plans))
        return cls(n, max_len, dev["pos_in_seq"], causal, dev["cu"].to(torch.int32), window, path, buckets, total)

    @property
    def window_bites(self) -> bool:
        return self.window is not None and self.max_len > self.window


def _bucket_plan(starts: np.ndarray, lengths: np.ndarray, *, window: int | None) -> dict:
    """Host side of one bucket: which packed row each grid cell reads, and which cells are real."""
    longest = int(lengths.max())
    pos = np.arange(longest)
    valid = pos[None, :] < lengths[:, None]                      # [m, L]
    rows = starts[:, None] + pos[None, :]                        # packed row per cell
    keep = np.flatnonzero(valid)
    return {"gather": np.where(valid, rows, 0).ravel(), "keep": keep, "scatter": rows.ravel()[keep],
            "lengths": lengths, "mask": bool((window is not None and longest > window) or lengths.min() < longest)}


def _bucket(dev: dict[str, torch.Tensor], b: int, plan: dict, *, causal: bool, window: int | None) -> Bucket:
    lengths = dev[f"{b}.lengths"]
    count, longest = len(plan["lengths"]), int(plan["lengths"].max())
    mask = None
    if plan["mask"]:    # built on the device from the bucket's lengths: no copy of [m, L, L] bools
        pos = torch.arange(longest, device=lengths.device)
        row, col = pos.unsqueeze(1), pos.unsqueeze(0)                  # query i, key j
        valid = col < lengths.unsqueeze(1)                                # [m, L] real keys
        mask = valid.view(count, 1, 1, longest).expand(count, 1, longest, longest)
        if causal:
            mask = mask & (col <= row)
        if window is not None and longest > window:
            mask = mask & (row - col < window)
        mask = mask.contiguous()
    return Bucket(count, longest, gather=dev[f"{b}.gather"], keep=dev[f"{b}.keep"], scatter=dev[f"{b}.scatter"],
                  mask=mask)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
    """q: [T, Hq, D], k/v: [T, Hkv, D] (grouped-query when Hkv < Hq) -> [T, Hq, D]."""
    PATH_CALLS[layout.path] += 1
    if layout.path == VARLEN:
        if _VARLEN is None:
            raise RuntimeError("the varlen attention path was chosen but this torch has no varlen_attn")
        return _VARLEN(q, k, v, layout)
    with _no_math_kernel() if q.is_cuda else nullcontext():
        return _attend_grid(q, k, v, layout)


def _attend_grid(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
    groups = q.shape[1] // k.shape[1]
    if layout.num_sequences == 1 and not layout.window_bites:
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1).unsqueeze(0), _repeat_kv(k.transpose(0, 1).unsqueeze(0), groups),
            _repeat_kv(v.transpose(0, 1).unsqueeze(0), groups), is_causal=layout.causal)
        return out.squeeze(0).transpose(0, 1)
    out = q.new_empty(q.shape[0], q.shape[1], v.shape[2])
    for b in layout.buckets:
        def grid(x: torch.Tensor, b=b) -> torch.Tensor:   # [T, H, D] -> [m, H, L, D]
            return x.index_select(0, b.gather).view(b.count, b.longest, *x.shape[1:]).transpose(1, 2)

        o = F.scaled_dot_product_attention(grid(q), _repeat_kv(grid(k), groups), _repeat_kv(grid(v), groups),
                                           attn_mask=b.mask, is_causal=layout.causal and b.mask is None)
        cells = o.transpose(1, 2).reshape(b.count * b.longest, *out.shape[1:])
        out.index_copy_(0, b.scatter, cells.index_select(0, b.keep))   # unique rows: no atomics, same bits
    return out


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[m, Hkv, L, D] -> [m, Hkv * groups, L, D]: query head h reads K/V head h // groups."""
    if groups == 1:
        return x
    m, h, length, d = x.shape
    return x.unsqueeze(2).expand(m, h, groups, length, d).reshape(m, h * groups, length, d)


def _no_math_kernel():
    """On CUDA, SDPA may use any fused kernel but not the math one (fp32 scores of [m, H, L, L])."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    if hasattr(SDPBackend, "CUDNN_ATTENTION"):
        backends.append(SDPBackend.CUDNN_ATTENTION)
    return sdpa_kernel(backends)


# -- the varlen kernel ------------------------------------------------------------------------

@dataclass(frozen=True)
class VarlenKernel:
    """torch's ``varlen_attn``, called the way the installed version takes it.

    torch 2.10 has ``is_causal`` and neither a window nor grouped-query heads;
    later versions take ``window_size=(left, right)`` (causal is ``right=0``) and
    then ``enable_gqa``. Without ``enable_gqa`` K/V heads are repeated here.
    """

    fn: Callable
    window: bool     # takes window_size
    gqa: bool        # takes enable_gqa
    is_causal: bool = False   # takes is_causal (2.10; passed as well wherever it exists)

    @classmethod
    def wrap(cls, fn: Callable | None) -> VarlenKernel | None:
        if fn is None:
            return None
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            return None
        if "window_size" not in params and "is_causal" not in params:
            return None
        return cls(fn, "window_size" in params, "enable_gqa" in params, "is_causal" in params)

    def supports_window(self) -> bool:
        return self.window

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
        check_varlen_args(q, k, v, layout)
        kwargs: dict = {}
        if self.window:
            # window_size=(left, right): query i sees keys [i - left, i + right]; -1 = unbounded.
            # (-1, 0) is plain causal; a window only where it bites (a longer sequence than it).
            left = layout.window - 1 if layout.window_bites else -1
            kwargs["window_size"] = (left, 0 if layout.causal else -1)
        elif layout.window_bites:
            raise RuntimeError(f"this torch's varlen_attn has no sliding window, and a sequence of "
                               f"{layout.max_len} tokens exceeds the model's window of {layout.window}")
        if self.is_causal:
            kwargs["is_causal"] = layout.causal
        groups = q.shape[1] // k.shape[1]
        if groups > 1:
            if self.gqa:
                kwargs["enable_gqa"] = True
            else:
                k, v = _repeat_kv_packed(k, groups), _repeat_kv_packed(v, groups)
        return self.fn(q, k, v, layout.cu_seqlens, layout.cu_seqlens, layout.max_len, layout.max_len, **kwargs)


def _repeat_kv_packed(x: torch.Tensor, groups: int) -> torch.Tensor:
    t, h, d = x.shape
    return x.unsqueeze(2).expand(t, h, groups, d).reshape(t, h * groups, d)


def check_varlen_args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttentionLayout) -> None:
    """What the flash kernel needs, checked on the host (cheap; also runs under FakeTensorMode in CI)."""
    if q.dtype not in (torch.float16, torch.bfloat16) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"varlen attention needs q, k, v all fp16 or all bf16, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError("varlen attention takes packed [tokens, heads, head_dim] tensors")
    if not (q.shape[0] == k.shape[0] == v.shape[0] == layout.num_tokens):
        raise ValueError(f"q/k/v have {q.shape[0]}/{k.shape[0]}/{v.shape[0]} rows, "
                         f"the batch {layout.num_tokens} tokens")
    if k.shape[1] != v.shape[1] or q.shape[1] % k.shape[1]:
        raise ValueError(f"{q.shape[1]} query heads cannot share {k.shape[1]} K/V heads")
    if q.shape[2] != k.shape[2] or q.shape[2] % 8 or q.shape[2] > 256:
        raise ValueError(f"head dim {q.shape[2]}: the flash kernel takes a multiple of 8 up to 256")
    if layout.cu_seqlens.dtype != torch.int32 or layout.cu_seqlens.device != q.device:
        raise TypeError(f"cu_seqlens must be int32 on {q.device}, is {layout.cu_seqlens.dtype} on "
                        f"{layout.cu_seqlens.device}")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("varlen attention needs the head dim contiguous")


try:  # PyTorch >= 2.10 ships a varlen flash-attention op; older builds have only the grid path.
    from torch.nn.attention.varlen import varlen_attn as _torch_varlen_attn
except ImportError:  # pragma: no cover - depends on the torch build
    _torch_varlen_attn = None

_VARLEN: VarlenKernel | None = VarlenKernel.wrap(_torch_varlen_attn)


# -- choosing the path, once ------------------------------------------------------------------

@dataclass(frozen=True)
class AttentionChoice:
    path: str
    reason: str


class AttentionUnavailable(RuntimeError):
    """The attention path that was asked for cannot run here (raised at start-up, never mid-traffic)."""


def select_attention(device: torch.device, dtype: torch.dtype, *, heads: int, kv_heads: int, head_dim: int,
                     causal: bool, window: int | None, max_seq_len: int, want: str = "auto",
                     kernel: VarlenKernel | None | str = "installed") -> AttentionChoice:
    """The attention path for one model on ``device``, decided once at start-up and logged.

    ``want``: ``auto`` (varlen where it runs, else grid, with a warning on CUDA),
    ``varlen`` (raise ``AttentionUnavailable`` if it cannot run) or ``grid``.
    On CUDA the varlen kernel is first run on a small batch of mixed lengths with
    the model's head layout and window, and compared with the grid path: a kernel
    that raises or disagrees is not chosen.
    """
    if want not in ("auto", *PATHS):
        raise ValueError(f"attention must be auto, {GRID} or {VARLEN}, not {want!r}")
    kern = _VARLEN if kernel == "installed" else kernel
    if want == GRID:
        return _chosen(GRID, "asked for", device)
    problem = None
    if device.type != "cuda" and kernel == "installed":
        problem = f"the varlen kernel is CUDA only; this model runs on {device.type}"
    elif dtype not in (torch.float16, torch.bfloat16):
        problem = f"the varlen kernel takes fp16/bf16, this model runs in {str(dtype).removeprefix('torch.')}"
    elif kern is None:
        problem = f"torch {torch.__version__} has no usable torch.nn.attention.varlen.varlen_attn"
    elif window is not None and max_seq_len > window and not kern.supports_window():
        problem = (f"torch {torch.__version__}'s varlen_attn has no sliding window and this model reads "
                   f"{max_seq_len} tokens past its window of {window}")
    else:
        problem = probe_varlen(kern, device, dtype, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                               causal=causal, window=window)
    if problem is None:
        return _chosen(VARLEN, "the varlen flash kernel ran a mixed-length probe and agreed with the grid path",
                       device)
    if want == VARLEN:
        raise AttentionUnavailable(f"attention path 'varlen' was asked for but cannot run: {problem}")
    return _chosen(GRID, problem, device, warn=device.type == "cuda")


def _chosen(path: str, reason: str, device: torch.device, *, warn: bool = False) -> AttentionChoice:
    (log.warning if warn else log.info)("attention path on %s: %s (%s)", device, path, reason)
    return AttentionChoice(path, reason)


#: lengths of the start-up probe: a single token, short, and longer than a flash tile, in one batch
PROBE_LENGTHS = (1, 7, 33, 130)


def probe_varlen(kernel: VarlenKernel, device: torch.device, dtype: torch.dtype, *, heads: int, kv_heads: int,
                 head_dim: int, causal: bool, window: int | None, lengths: Sequence[int] = PROBE_LENGTHS,
                 tolerance: float = 0.1) -> str | None:
    """None if ``kernel`` runs a mixed-length batch and matches the grid path, else what went wrong.

    Unit-variance q, k, v: bf16 rounding moves outputs by ~0.02 at most (max |output| ~4); a
    kernel that crosses sequence boundaries or gets the causal mask wrong moves them by ~3-5.
    """
    g = torch.Generator(device="cpu").manual_seed(0)
    total = sum(lengths)
    q, k, v = (torch.randn(total, h, head_dim, generator=g).to(device=device, dtype=dtype)
               for h in (heads, kv_heads, kv_heads))
    cu = np.concatenate([[0], np.cumsum(lengths)])
    # A window shorter than the longest probe sequence, when the model has one and the kernel
    # takes one, so that it is exercised too.
    probe_window = None if window is None or not kernel.supports_window() else min(window, max(lengths) // 2)
    try:
        with torch.inference_mode():
            got = kernel(q, k, v, AttentionLayout.build(cu, causal=causal, window=probe_window, path=VARLEN,
                                                        device=device))
            want = _attend_grid(q.float(), k.float(), v.float(),
                                AttentionLayout.build(cu, causal=causal, window=probe_window, device=device))
            err = float((got.float() - want).abs().max())
    except Exception as exc:
        return f"the varlen kernel failed its start-up probe: {type(exc).__name__}: {exc}"
    if not err <= tolerance:
        return f"the varlen kernel disagrees with the grid path on its start-up probe (max abs diff {err:.3g})"
    return None
