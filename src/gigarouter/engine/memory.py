"""Several models on one GPU: each one's activation memory is an explicit share of what is free.

Models load one at a time (router/router.py). Without a plan, the first model
to load would size its token budget from all the memory free at that moment
(the weights of the models after it not yet loaded), warm up at that size, and
leave the next models little or nothing. With a plan, per device:

- a model's share is the memory free now, less what the models budgeted before
  it will need again, split evenly between it and the models still to load;
- once its warm-up has settled its budget, the bytes that budget needs are
  recorded against the device, and the cache its warm-up filled is handed back,
  so the next model measures free memory truthfully.

A runtime out-of-memory is still possible (fragmentation, a neighbour process):
the scheduler splits the batch and retries, then answers 503 with Retry-After.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


def memory_share(free_bytes: int, *, held_bytes: int, models_left: int) -> int:
    """Bytes one model may plan its activations in: free memory less what others hold, split evenly."""
    return max(0, free_bytes - held_bytes) // max(1, models_left)


@dataclass
class DeviceMemoryPlan:
    """One device's ledger: how many models will share it, how many have a budget, what they hold."""

    models: int
    budgeted: int = 0
    held_bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def share(self, free_bytes: int) -> int:
        with self._lock:
            return memory_share(free_bytes, held_bytes=self.held_bytes, models_left=self.models - self.budgeted)

    def settle(self, activation_bytes: int) -> None:
        """A model's budget is final: its activations need ``activation_bytes`` from now on."""
        with self._lock:
            self.budgeted += 1
            self.held_bytes += max(0, int(activation_bytes))


_PLANS: dict[str, DeviceMemoryPlan] = {}
_PLANS_LOCK = threading.Lock()


def plan_for(device_key: str, *, models: int) -> DeviceMemoryPlan:
    """The process's plan for ``device_key`` (e.g. ``cuda:0``), made on first use."""
    with _PLANS_LOCK:
        plan = _PLANS.get(device_key)
        if plan is None:
            plan = _PLANS[device_key] = DeviceMemoryPlan(models=max(1, models))
        return plan
