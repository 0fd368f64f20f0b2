"""TorchEngine: packing in, pooled vectors out; budgets from memory and the measured knee; health that never waits."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch import nn

from gigarouter.engine import runner
from gigarouter.engine.base import pack
from gigarouter.engine.heartbeat import Heartbeat
from gigarouter.engine.models import attention as runner_attention
from gigarouter.engine.models.attention import AttentionUnavailable
from gigarouter.engine.runner import (
    PROCESS_THREADS,
    BudgetPoint,
    TorchEngine,
    budget_from_memory,
    budget_from_throughput,
    default_parallel_batches,
)
from gigarouter.errors import EngineOutOfMemory, ModelLoadError
from gigarouter.pooling.pooling import PoolingMode


class Echo(nn.Module):
    """hidden = one-hot-ish features of the token id, so pooling is checkable by hand."""

    def __init__(self, fail_over_tokens: int | None = None) -> None:
        super().__init__()
        self.fail_over_tokens = fail_over_tokens
        self.calls: list[int] = []

    def forward(self, ids: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
        self.calls.append(ids.numel())
        if self.fail_over_tokens is not None and ids.numel() > self.fail_over_tokens:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return torch.stack([ids.float(), ids.float() ** 2], dim=1)


def engine(model: nn.Module, pooling=PoolingMode.MEAN, budget=64, max_len=8) -> TorchEngine:
    return TorchEngine(model, pooling=pooling, dim=2, device=torch.device("cpu"), token_budget=budget,
                       max_seq_len=max_len)


def test_embed_pools_each_sequence_over_its_span():
    out = engine(Echo()).embed(pack([[1, 2, 3], [4, 6]], pool_starts=[1, 0]))
    np.testing.assert_allclose(out, [[2.5, 6.5], [5.0, 26.0]])
    last = engine(Echo(), PoolingMode.LAST).embed(pack([[1, 2, 3], [4, 6]]))
    np.testing.assert_allclose(last, [[3, 9], [6, 36]])


def test_warmup_halves_the_budget_until_it_fits():
    model = Echo(fail_over_tokens=20)
    e = engine(model, budget=64, max_len=8)
    e.warmup()
    assert e.token_budget == 16
    assert model.calls[:3] == [64, 32, 16]


def test_torch_out_of_memory_becomes_engine_out_of_memory(monkeypatch):
    model = Echo()
    e = engine(model)

    def forward(ids, cu):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

    monkeypatch.setattr(model, "forward", forward)
    with pytest.raises(EngineOutOfMemory) as err:
        e.embed(pack([[1, 2, 3], [4, 5]]))
    assert not isinstance(err.value, torch.OutOfMemoryError)
    assert err.value.status == 503 and err.value.code == "device_out_of_memory"
    assert "5 tokens" in err.value.message and "GiB" not in err.value.message   # no torch internals
    monkeypatch.undo()
    np.testing.assert_allclose(e.embed(pack([[1, 2, 3]])), [[2.0, 14 / 3]])   # the engine still works after


def test_warmup_gives_up_with_engine_out_of_memory_when_one_sequence_does_not_fit():
    e = engine(Echo(fail_over_tokens=4), budget=64, max_len=8)
    with pytest.raises(EngineOutOfMemory):
        e.warmup()
    assert e.token_budget == 8


def test_budget_from_memory_scales_with_free_memory_and_rounds_to_whole_sequences():
    mistral = dict(hidden=4096, intermediate=14336, dtype_bytes=2, max_seq_len=512)
    small = budget_from_memory(free_bytes=8 * 2**30, **mistral)
    large = budget_from_memory(free_bytes=60 * 2**30, **mistral)
    assert small % 512 == 0 and large % 512 == 0
    assert 0 < small < large <= 262_144
    # per token: (6*4096 + 3*14336) * 2 bytes + 4*4096 bytes of float32 pooling = 151,552
    assert large == int(60 * 2**30 * 0.6) // 151_552 // 512 * 512
    assert budget_from_memory(free_bytes=1, **mistral) == 512


class ThreadsSeen(Echo):
    def forward(self, ids: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
        self.calls.append(torch.get_num_threads())
        return super().forward(ids, cu)


@pytest.mark.skipif(PROCESS_THREADS < 2, reason="needs at least 2 torch threads to tell a share from all")
def test_a_concurrent_batch_runs_on_its_share_of_the_cores_and_a_lone_one_on_all():
    cores = PROCESS_THREADS
    callers = torch.get_num_threads()   # (an earlier test's pass on this thread may have set it)
    model = ThreadsSeen()
    e = TorchEngine(model, pooling=PoolingMode.MEAN, dim=2, device=torch.device("cpu"), token_budget=64,
                    max_seq_len=8, parallel_batches=2)
    batch = pack([[1, 2, 3, 4, 5, 6, 7, 8]] * 5)        # 40 tokens: over SMALL_PASS_TOKENS
    with ThreadPoolExecutor(1) as device_thread:
        device_thread.submit(e.embed, batch, concurrent=True).result()
        device_thread.submit(e.embed, pack([[1, 2]])).result()     # a lone query: one thread
        device_thread.submit(e.embed, batch).result()
        device_thread.submit(e.embed, pack([[1, 2]])).result()     # the last pass: one thread
    assert model.calls[0] == max(1, cores // 2) and model.calls[4] == cores   # Echo logs ids too
    assert model.calls[2] == 1 and model.calls[6] == 1
    assert torch.get_num_threads() == callers      # the caller's own setting is untouched
    # A thread started afterwards gets the process's count, not a pass's (torch's last setting
    # is what new threads inherit: it was 1 after a lone query, so a user's threads ran torch
    # on one core), and a model loaded there gets one batch per core.
    with ThreadPoolExecutor(1) as later_thread:
        assert later_thread.submit(torch.get_num_threads).result() == cores
        assert later_thread.submit(default_parallel_batches, torch.device("cpu")).result() == cores


@pytest.mark.skipif(PROCESS_THREADS < 2, reason="needs at least 2 torch threads to tell 1 from all")
def test_a_pass_on_the_callers_own_thread_leaves_its_thread_count_alone():
    model = ThreadsSeen()
    e = TorchEngine(model, pooling=PoolingMode.MEAN, dim=2, device=torch.device("cpu"), token_budget=64,
                    max_seq_len=8, parallel_batches=2)
    torch.set_num_threads(PROCESS_THREADS)
    e.embed(pack([[1, 2]]))                        # a lone query runs on one thread ...
    assert model.calls[0] == 1
    assert torch.get_num_threads() == PROCESS_THREADS          # ... and gives the thread back as it was
    torch.set_num_threads(1)                       # a caller's own setting survives a full pass too
    try:
        e.embed(pack([[1, 2, 3, 4, 5, 6, 7, 8]] * 5))
        assert model.calls[-2] == PROCESS_THREADS and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(PROCESS_THREADS)


def test_parallel_batches_on_the_real_model_give_the_vectors_of_serial_ones(minilm_recipe):
    from gigarouter.providers.local.loading import load_model
    from gigarouter.settings import Settings, default_model

    _recipe, real = load_model(default_model(), Settings(cpu_parallel_batches=2), progress=False)
    assert real.parallel_batches == 2
    texts = ["a short query", "a longer passage about llamas, alpacas and other camelids",
             "one more", "and a fourth text of middling length"]
    items = minilm_recipe.prepare_texts(texts, input_type="document", instruction=None, truncate="end")
    batches = [pack([it.token_ids for it in items[:2]]), pack([it.token_ids for it in items[2:]])]
    serial = [real.embed(b) for b in batches]
    with ThreadPoolExecutor(2) as pool:
        parallel = list(pool.map(lambda b: real.embed(b, concurrent=True), batches * 3))
    for i, got in enumerate(parallel):
        np.testing.assert_allclose(got, serial[i % 2], rtol=0, atol=1e-5)


# -- the GPU budget from the measured knee and the latency bound ---------------------------------

def points(*rows):
    return [BudgetPoint(b, tps, secs) for b, tps, secs in rows]


H100_LIKE = points((2048, 20_000, 0.10), (4096, 34_000, 0.12), (8192, 40_000, 0.20), (16384, 42_000, 0.39),
                   (32768, 43_000, 0.76), (65536, 43_500, 1.5), (131072, 43_600, 3.0), (262144, 43_700, 6.0))


def test_the_budget_is_the_knee_of_throughput_not_the_memory_ceiling():
    # 90% of the best (43,700) is 39,330: 8192 is the first budget past it, and its batch takes 200 ms.
    assert budget_from_throughput(H100_LIKE, memory_budget=262_144, max_seq_len=512) == 8192


def test_the_latency_bound_cuts_below_the_knee_when_batches_are_slow():
    slow = points((2048, 10_000, 0.2), (4096, 14_000, 0.29), (8192, 16_000, 0.51), (16384, 16_500, 0.99))
    assert budget_from_throughput(slow, memory_budget=262_144, max_seq_len=512, max_batch_s=0.3) == 4096
    # No budget meets the bound: the smallest measured.
    assert budget_from_throughput(slow, memory_budget=262_144, max_seq_len=512, max_batch_s=0.1) == 2048


def test_memory_caps_the_budget_and_the_result_is_whole_longest_sequences():
    assert budget_from_throughput(H100_LIKE, memory_budget=4096, max_seq_len=512) == 4096
    assert budget_from_throughput(H100_LIKE, memory_budget=262_144, max_seq_len=4096) == 8192
    assert budget_from_throughput(H100_LIKE, memory_budget=262_144, max_seq_len=3000) == 6000
    assert budget_from_throughput(H100_LIKE[:1], memory_budget=262_144, max_seq_len=4096) == 4096
    assert budget_from_throughput([], memory_budget=20_000, max_seq_len=4096) == 16384


class Timed(Echo):
    """A model whose pass takes 5 ms + 10 us per token on a fake clock."""

    def __init__(self, clock: list[float]) -> None:
        super().__init__()
        self.clock = clock

    def forward(self, ids, cu):
        self.clock[0] += 0.005 + 1e-5 * ids.numel()
        return super().forward(ids, cu)


def test_calibration_measures_each_budget_and_picks_from_the_sweep(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(runner.time, "perf_counter", lambda: clock[0])
    e = TorchEngine(Timed(clock), pooling=PoolingMode.MEAN, dim=2, device=torch.device("cpu"), token_budget=65536,
                    max_seq_len=512, max_batch_s=0.05)
    chosen = e.calibrate(budgets=(1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072))
    # A pass of T tokens takes 5 ms + 10 us x T: 4096 tokens 46 ms (89k tokens/s), 16384 tokens 169 ms
    # (97k tokens/s) > 2 x 50 ms, so the sweep stops there (131072, over memory, is never a candidate).
    # The knee (90% of 97k) is 4096, which also meets the 50 ms bound.
    assert [p.token_budget for p in e.calibration] == [1024, 2048, 4096, 8192, 16384]
    assert e.calibration[2].batch_seconds == pytest.approx(0.04596)
    assert chosen == e.token_budget == 4096


def test_warmup_calibrates_only_when_asked(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(runner.time, "perf_counter", lambda: clock[0])
    fixed = TorchEngine(Timed(clock), pooling=PoolingMode.MEAN, dim=2, device=torch.device("cpu"),
                        token_budget=8192, max_seq_len=512)
    fixed.warmup()
    assert fixed.token_budget == 8192 and not fixed.calibration
    settled = []
    measured = TorchEngine(Timed(clock), pooling=PoolingMode.MEAN, dim=2, device=torch.device("cpu"),
                           token_budget=8192, max_seq_len=512, calibrate_budget=True, on_budget=settled.append)
    measured.warmup()
    assert measured.calibration and measured.token_budget <= 8192
    assert settled == [measured.token_budget]        # the device's memory plan learns the final budget


def tiny_mistral(causal: bool = True) -> nn.Module:
    from gigarouter.engine.models.mistral import MistralConfig, MistralModel

    with torch.device("meta"):
        model = MistralModel(MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, causal=causal))
    model = model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.dim() == 1 else 0.0))
    return model.eval()


def test_warmup_refuses_a_model_whose_packed_batch_differs_from_its_sequences_alone(monkeypatch):
    model = tiny_mistral(causal=False)
    engine(model, pooling=PoolingMode.MEAN, budget=256, max_len=64).warmup()
    # Attention gone wrong: the whole packed batch as one sequence (what a bad cu_seqlens does).
    build = runner_attention.AttentionLayout.build.__func__

    def one_sequence(cls, cu_seqlens, **kwargs):
        cu = np.asarray(cu_seqlens)
        return build(cls, np.array([0, cu[-1]]), **kwargs)

    monkeypatch.setattr(runner_attention.AttentionLayout, "build", classmethod(one_sequence))
    with pytest.raises(ModelLoadError, match="does not give the vectors of its sequences run alone"):
        engine(model, pooling=PoolingMode.MEAN, budget=256, max_len=64).warmup()


class Held(Echo):
    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def forward(self, ids, cu):
        self.entered.set()
        self.release.wait(10)
        return super().forward(ids, cu)


def test_health_answers_at_once_while_a_pass_holds_the_device_and_flags_a_stalled_one():
    model = Held()
    beat = Heartbeat(stall_floor_s=0.3, stall_factor=1)
    e = TorchEngine(model, pooling=PoolingMode.MEAN, dim=2, device=torch.device("cpu"), token_budget=64,
                    max_seq_len=8, heartbeat=beat)
    with ThreadPoolExecutor(1) as device_thread:
        running = device_thread.submit(e.embed, pack([[1, 2, 3]]))
        assert model.entered.wait(5)
        started = time.perf_counter()
        assert e.health()
        assert time.perf_counter() - started < 0.05
        time.sleep(0.4)
        state = e.health_state()
        assert not state.ok and "forward pass has run" in state.reason
        model.release.set()
        running.result(5)
    assert e.health()


def test_the_engine_chooses_and_records_its_attention_path_once(caplog):
    model = tiny_mistral()
    with caplog.at_level("INFO"):
        e = engine(model, pooling=PoolingMode.LAST, budget=64, max_len=16)
    assert e.attention.path == model.attention_path == "grid"
    assert "attention path on cpu: grid" in caplog.text
    with pytest.raises(AttentionUnavailable):
        TorchEngine(model, pooling=PoolingMode.LAST, dim=32, device=torch.device("cpu"), token_budget=64,
                    max_seq_len=16, attention="varlen")
