"""Several models on one GPU: explicit shares of free memory (engine/memory.py)."""

from __future__ import annotations

from gigarouter.engine.memory import DeviceMemoryPlan, memory_share, plan_for
from gigarouter.engine.runner import activation_bytes_per_token, budget_from_memory

GB = 10**9


def test_the_share_splits_what_is_free_between_this_model_and_those_still_to_load():
    assert memory_share(100 * GB, held_bytes=0, models_left=2) == 50 * GB
    assert memory_share(100 * GB, held_bytes=30 * GB, models_left=1) == 70 * GB
    assert memory_share(10 * GB, held_bytes=30 * GB, models_left=1) == 0
    assert memory_share(10 * GB, held_bytes=0, models_left=0) == 10 * GB


def test_two_7b_models_on_one_h100_each_get_a_fair_budget():
    """Free memory as the second model sees it excludes the first's weights; its activations are held for it."""
    mistral = dict(hidden=4096, intermediate=14336, dtype_bytes=2, max_seq_len=512)
    per_token = activation_bytes_per_token(hidden=4096, intermediate=14336, dtype_bytes=2)
    plan = DeviceMemoryPlan(models=2)
    free_after_a = 80 * GB - 15 * GB                      # model A's weights loaded
    budget_a = budget_from_memory(free_bytes=plan.share(free_after_a), **mistral)
    plan.settle(per_token * 16384)                        # A's warm-up settled 16,384 tokens
    free_after_b = free_after_a - 15 * GB                 # A's cache handed back, B's weights loaded
    budget_b = budget_from_memory(free_bytes=plan.share(free_after_b), **mistral)
    assert plan.budgeted == 1 and plan.held_bytes == per_token * 16384
    # Unplanned, A would have taken 60% of all 65 GB for activations and left B 20 GB in all.
    assert budget_a == budget_from_memory(free_bytes=free_after_a // 2, **mistral)
    assert budget_b == budget_from_memory(free_bytes=free_after_b - per_token * 16384, **mistral)
    assert budget_a >= 16384 and budget_b >= 16384


def test_one_plan_per_device():
    a = plan_for("cuda:7", models=3)
    assert plan_for("cuda:7", models=1) is a and a.models == 3
    assert plan_for("cuda:6", models=1) is not a
