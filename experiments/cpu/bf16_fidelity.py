"""How far the default model's vectors move in bfloat16 on this CPU: cosine of each bf16 vector
to its fp32 twin over the mixed corpus (the fidelity that keeps bf16 opt-in on CPU).

    python experiments/cpu/bf16_fidelity.py
"""

from __future__ import annotations

import dataclasses

import numpy as np
from _common import header

from gigarouter.bench.corpus import mixed_corpus
from gigarouter.embedder import Embedder
from gigarouter.settings import default_model


def main() -> None:
    texts = list(mixed_corpus(512).texts)
    fp32 = Embedder(dataclasses.replace(default_model(), dtype="float32")).encode(texts)
    bf16 = Embedder(dataclasses.replace(default_model(), dtype="bfloat16")).encode(texts)
    cos = np.sum(fp32 * bf16, axis=1)        # both normalised
    print(f"# {header()}; {len(texts)} texts of the mixed corpus")
    print(f"bf16 vs fp32 cosine: min {cos.min():.6f}, mean {cos.mean():.6f}, p01 {np.percentile(cos, 1):.6f}")


if __name__ == "__main__":
    main()
