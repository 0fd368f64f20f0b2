"""``truncate: "chunk"``: an over-long input becomes overlapping windows, each embedded on its own.

An input that fits the model (the recipe prepares it with ``truncate="none"`` without
complaint) is prepared exactly as without chunking, so its vector is the plain vector bit
for bit. A longer one is tokenized on its own (no special tokens: the content tokens that a
token-id input would carry) and cut into windows of ``recipe.window_room`` content tokens,
each overlapping the previous one by ``room // OVERLAP_DIVISOR`` tokens; every window is then
prepared as a token-id input, so the recipe adds to each what it adds to any input (special
tokens, a query's instruction, llm2vec's [INST] template). The caller pools the windows'
vectors weighted by their content tokens (``pooling.encoding.pool_windows``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gigarouter.errors import InputTooLong
from gigarouter.recipes.base import InputType, PreparedInput, Recipe

#: Each window repeats the last 1/8 of the previous window's tokens, so a sentence cut at a window's
#: edge is seen whole by one of the two.
OVERLAP_DIVISOR = 8


@dataclass(frozen=True)
class Windowed:
    """Every input's windows, in input order."""

    items: list[PreparedInput]        # what the model sees, one per window
    contents: list[list[int]]         # each window's content token ids (what a remote provider receives)
    weights: list[list[int]]          # per input: its windows' content token counts


def spans(length: int, room: int) -> list[tuple[int, int]]:
    """``[start, end)`` windows of at most ``room`` tokens covering ``length``, overlapping by room // 8."""
    if length <= room:
        return [(0, length)]
    stride = room - room // OVERLAP_DIVISOR
    out, start = [], 0
    while True:
        end = min(start + room, length)
        out.append((start, end))
        if end == length:
            return out
        start += stride


def prepare_windows(recipe: Recipe, *, texts: Sequence[str] | None, token_ids: Sequence[Sequence[int]] | None,
                    input_type: InputType, instruction: str | None) -> Windowed:
    """Blocking (tokenizes): call it off the event loop."""
    items: list[PreparedInput] = []
    contents: list[list[int]] = []
    weights: list[list[int]] = []
    options = dict(input_type=input_type, instruction=instruction)
    room = None
    for value in (texts if texts is not None else token_ids or ()):
        text = isinstance(value, str)
        content = recipe.tokenizer.encode(value, add_special_tokens=False).ids if text else list(value)
        try:
            plain = (recipe.prepare_texts([value], truncate="none", **options) if text
                     else recipe.prepare_token_ids([value], truncate="none", **options))
        except InputTooLong:
            plain = None
        if plain is not None:
            items.extend(plain)
            contents.append(content)
            weights.append([len(content)])
            continue
        room = room or recipe.window_room(**options)
        windows = [content[a:b] for a, b in spans(len(content), room)]
        items.extend(recipe.prepare_token_ids(windows, truncate="none", **options))
        contents.extend(windows)
        weights.append([len(w) for w in windows])
    return Windowed(items=items, contents=contents, weights=weights)
