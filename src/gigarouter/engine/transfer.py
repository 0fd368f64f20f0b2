"""Host index arrays onto the device in one copy that never waits for the device.

Everything a forward pass needs to know about its batch (where sequences begin
and end, which rows attention gathers, which rows pooling reads) is worked out
on the host, from the ``cu_seqlens`` the scheduler packed, before the first
kernel of the pass is queued. ``upload`` then lays those arrays side by side in
one page-locked (pinned) buffer and copies it with ``non_blocking=True``: the
host goes straight on to queue the pass's kernels while the copy runs, and no
call in the pass waits for the device until the pooled vectors come back.
PyTorch's pinned-memory cache hands the buffer out again only once its copy has
finished, so nothing here needs an event of its own.

On CPU the arrays are wrapped as they are (no copy at all).
"""

from __future__ import annotations

import numpy as np
import torch


def upload(arrays: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """int64 host arrays -> int64 tensors on ``device``, same names and shapes."""
    host = {name: np.ascontiguousarray(a, dtype=np.int64) for name, a in arrays.items()}
    if device.type == "cpu":
        return {name: torch.from_numpy(a) for name, a in host.items()}
    flat = np.concatenate([a.ravel() for a in host.values()]) if host else np.zeros(0, dtype=np.int64)
    staged = torch.from_numpy(flat)
    if device.type == "cuda":
        staged = staged.pin_memory()
    on_device = staged.to(device, non_blocking=True)
    out, offset = {}, 0
    for name, a in host.items():
        out[name] = on_device[offset:offset + a.size].view(a.shape)
        offset += a.size
    return out


def host_ints(values) -> np.ndarray:
    """``cu_seqlens`` (or any index vector) as a host int64 array.

    The engine passes the host copy it packed. A caller that only has a device
    tensor pays one copy back here, which waits for the device: pass the host
    array where there is one.
    """
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu").numpy().astype(np.int64, copy=False)
    return np.asarray(values, dtype=np.int64)
