"""PyTorch's CPU SDPA against an explicit matmul-softmax-matmul, on one thread, for bucket
shapes the served mix produces (12 heads of 32 dimensions, as all-MiniLM-L6-v2).

    python experiments/cpu/attention_kernels.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _common import header
from _common import ms_per_call as ms

torch.set_num_threads(1)



def main() -> None:
    print(f"# {header()}; 1 thread")
    heads, dim = 12, 32
    for count, longest in ((12, 81), (4, 240), (60, 16)):
        q, k, v = (torch.randn(count, heads, longest, dim) for _ in range(3))
        lengths = torch.randint(int(0.8 * longest), longest + 1, (count,))
        keep = (torch.arange(longest)[None, :] < lengths[:, None])[:, None, None, :]
        bias = torch.zeros(count, 1, 1, longest).masked_fill(~keep, float("-inf"))

        def sdpa(q=q, k=k, v=v, keep=keep):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=keep)

        def explicit(q=q, k=k, v=v, bias=bias):
            return torch.matmul((torch.matmul(q, k.transpose(-1, -2)) * dim ** -0.5 + bias).softmax(-1), v)

        diff = float((sdpa() - explicit()).abs().max())
        print(f"bucket {count} x {longest} tokens: SDPA {ms(sdpa):.2f} ms, explicit {ms(explicit):.2f} ms "
              f"(max abs diff {diff:.0e})")


if __name__ == "__main__":
    main()
