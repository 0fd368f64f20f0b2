"""Could AMX's bf16 matmuls stand in for fp32 at fp32-like accuracy? fp32 against one bf16 pass
(oneDNN's fp32_precision="bf16") and three bf16 products of hi/lo splits (fp32 accumulation).

    python experiments/cpu/bf16x3_matmul.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _common import header
from _common import ms_per_call as ms


def split(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """t = hi + lo with hi exactly representable in bf16 (kept as float32)."""
    hi = t.bfloat16().float()
    return hi, t - hi


def main() -> None:
    torch.manual_seed(0)
    tokens, k, n = 1024, 384, 1536             # an FFN matmul of all-MiniLM-L6-v2 at the CPU budget
    x, w, b = torch.randn(tokens, k), torch.randn(n, k) * 0.05, torch.randn(n)
    exact = F.linear(x.double(), w.double(), b.double())
    w_hi, w_lo = split(w)
    w3 = torch.cat([w_hi, w_hi, w_lo], 1)

    def three_products():
        x_hi, x_lo = split(x)
        return F.linear(torch.cat([x_hi, x_lo, x_hi], 1), w3, b)

    def rel_error(y):
        return float((y.double() - exact).norm() / exact.norm())

    print(f"# {header()}; {torch.get_num_threads()} threads; [{tokens} x {k}] @ [{k} x {n}]")
    print(f"fp32:                 {ms(lambda: F.linear(x, w, b)):.2f} ms, "
          f"relative error {rel_error(F.linear(x, w, b)):.1e}")
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    try:
        print(f"one bf16 pass:        {ms(lambda: F.linear(x, w, b)):.2f} ms, "
              f"relative error {rel_error(F.linear(x, w, b)):.1e}")
        print(f"three bf16 products:  {ms(three_products):.2f} ms, relative error {rel_error(three_products()):.1e}")
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = "none"


if __name__ == "__main__":
    main()
