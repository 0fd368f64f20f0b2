import numpy as np
import pytest
import torch

from gigarouter.pooling import pooling
from gigarouter.pooling.encoding import finish, from_base64, to_base64
from gigarouter.pooling.pooling import PoolingMode, mean_chunks, pool


def packed():
    hidden = torch.arange(14, dtype=torch.float32).reshape(7, 2)   # 2 sequences: 3 + 4 tokens
    return hidden, torch.tensor([0, 3, 7]), torch.tensor([0, 2])


def test_mean_respects_pool_start():
    hidden, cu, starts = packed()
    out = pool(hidden, cu, starts, PoolingMode.MEAN)
    np.testing.assert_allclose(out[0], hidden[0:3].mean(0))
    np.testing.assert_allclose(out[1], hidden[5:7].mean(0))


def test_last_and_cls():
    hidden, cu, starts = packed()
    np.testing.assert_array_equal(pool(hidden, cu, starts, PoolingMode.LAST), hidden[[2, 6]])
    np.testing.assert_array_equal(pool(hidden, cu, starts, PoolingMode.CLS), hidden[[0, 3]])


def test_bfloat16_accumulates_in_float32():
    hidden = torch.full((4096, 1), 1.001, dtype=torch.bfloat16)
    out = pool(hidden, torch.tensor([0, 4096]), torch.tensor([0]), PoolingMode.MEAN)
    assert out.dtype == torch.float32
    assert abs(out.item() - float(hidden[0, 0])) < 1e-6


def test_dimensions_then_normalise():
    v = np.array([[3.0, 4.0, 12.0]], dtype=np.float32)
    out = finish(v, dimensions=2, normalize=True)
    np.testing.assert_allclose(out, [[0.6, 0.8]], rtol=1e-6)
    np.testing.assert_array_equal(finish(v, dimensions=None, normalize=False), v)


def test_base64_is_little_endian_float32():
    v = np.array([1.5, -2.25, 3e-8], dtype=np.float32)
    text = to_base64(v)
    assert np.frombuffer(__import__("base64").b64decode(text), dtype="<f4").tolist() == v.tolist()
    np.testing.assert_array_equal(from_base64(text), v)


def index_add_mean(hidden, cu, starts):
    """The mean as pooling computed it before (float atomics on CUDA): the numbers to match."""
    n = cu.numel() - 1
    lengths = cu[1:] - cu[:-1]
    seq = torch.repeat_interleave(torch.arange(n), lengths)
    keep = torch.arange(hidden.shape[0]) - cu[:-1][seq] >= starts[seq]
    sums = torch.zeros(n, hidden.shape[1]).index_add_(0, seq[keep], hidden[keep].float())
    return sums / (lengths - starts).clamp(min=1).float()[:, None]


def random_batch(n=40, width=96, max_len=300, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len, (n,), generator=g)
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    starts = (torch.rand(n, generator=g) * lengths).long().clamp(max=lengths - 1)
    return torch.randn(int(cu[-1]), width, generator=g).to(dtype), cu, starts


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mean_matches_the_index_add_mean_to_float32_rounding(dtype):
    hidden, cu, starts = random_batch(dtype=dtype)
    got = pool(hidden, cu, starts, PoolingMode.MEAN)
    torch.testing.assert_close(got, index_add_mean(hidden, cu, starts), rtol=1e-5, atol=2e-7)


def test_mean_gives_the_same_bits_every_time():
    """Same batch, same bits, also from a copy at another (unaligned) address.

    (On CPU the thread count changes how BLAS splits a product, hence the last bit, as it
    does for every linear layer of the model; one device thread keeps its count.)
    """
    hidden, cu, starts = random_batch(seed=1)
    first = pool(hidden, cu, starts, PoolingMode.MEAN)
    for offset in (0, 1, 3, 16):
        moved = torch.empty(hidden.numel() + offset).narrow(0, offset, hidden.numel()).view_as(hidden)
        moved.copy_(hidden)
        again = pool(moved, cu, starts, PoolingMode.MEAN)
        assert torch.equal(again.view(torch.int32), first.view(torch.int32))


def test_mean_chunks_bound_the_weight_matrix_and_cover_every_sequence_once(monkeypatch):
    hidden, cu, starts = random_batch(n=50, seed=2)
    cu_np = cu.numpy()
    chunks = mean_chunks(cu_np, max_elements=4000)
    assert chunks[0][0] == 0 and chunks[-1][1] == 50
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:], strict=False))
    for first, last in chunks:
        assert last - first == 1 or (last - first) * (cu_np[last] - cu_np[first]) <= 4000
    one = pool(hidden, cu, starts, PoolingMode.MEAN)
    monkeypatch.setattr(pooling, "CHUNK_ELEMENTS", 4000)
    many = pool(hidden, cu, starts, PoolingMode.MEAN)
    torch.testing.assert_close(many, one, rtol=1e-6, atol=1e-7)


def test_pooling_takes_host_arrays():
    hidden, cu, starts = packed()
    np.testing.assert_array_equal(pool(hidden, cu.numpy(), starts.numpy(), PoolingMode.MEAN),
                                  pool(hidden, cu, starts, PoolingMode.MEAN))
