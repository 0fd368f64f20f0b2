"""The packing rule, as a pure function: which waiting sequences form the next batch.

Cost of a batch is ``len(batch) * longest`` tokens. It bounds what the device
spends and what memory scales with whatever the attention path, and it makes
length grouping fall out of the budget: mixing a 16-token query with a
256-token document would cost 512, so similar lengths travel together. (The
CPU attention path pads each sequence only to its own length bucket, so a
cheaper cost such as the sum of lengths would be possible; it packed ~30% more
tokens per batch and ran no faster on 2 CPU cores, experiments/cpu/engine_variants.py,
so the simpler bound stays.)

Fairness: the oldest waiting sequence always rides in the next batch, so no
sequence waits behind an unbounded stream of better-fitting ones.
"""

from __future__ import annotations

from collections.abc import Sequence


def batch_cost(lengths: Sequence[int]) -> int:
    return len(lengths) * max(lengths) if lengths else 0


def plan_batch(lengths: Sequence[int], *, token_budget: int, window: int = 512) -> list[int]:
    """Indices (into ``lengths``, oldest first) of the sequences for the next batch.

    Looks at the ``window`` oldest sequences, always takes the oldest, then adds
    the sequences closest to it in length while ``batch_cost`` stays within the
    budget. A sequence longer than the budget goes alone.
    """
    if not lengths:
        return []
    candidates = range(min(window, len(lengths)))
    anchor = lengths[0]
    # Nearest length first; ties broken by age so older work goes first.
    order = sorted(candidates[1:], key=lambda i: (abs(lengths[i] - anchor), i))
    chosen = [0]
    longest = anchor
    for i in order:
        new_longest = max(longest, lengths[i])
        # A longer sequence that does not fit may still leave room for shorter ones
        # further down the order, so keep scanning instead of stopping.
        if (len(chosen) + 1) * new_longest <= token_budget:
            chosen.append(i)
            longest = new_longest
    return sorted(chosen)
