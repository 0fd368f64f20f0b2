"""The packing rule, as a pure function: which waiting sequences form the next batch.

Cost of a batch is ``len(batch) * longest`` tokens: on the portable attention
path every sequence in a batch is padded to the longest one inside attention,
so this is what the device really spends (and what memory scales with). It
also makes length grouping fall out of the budget: mixing a 16-token query
with a 256-token document would cost 512, so similar lengths travel together.

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
