import numpy as np
import torch

from gigarouter.pooling.encoding import finish, from_base64, to_base64
from gigarouter.pooling.pooling import PoolingMode, pool


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
