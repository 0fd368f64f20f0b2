"""``gigarouter bench cache``'s workload and summary (the servers it drives are not started here)."""

from __future__ import annotations

from gigarouter.bench.cache import CacheBenchOptions, markdown, repeating_inputs, summarize, workloads
from gigarouter.bench.corpus import TokenCounter
from gigarouter.engine.sources import embedded_model_dir


def test_exactly_the_asked_share_of_inputs_repeat_an_earlier_one():
    fresh = [f"text {i}" for i in range(1000)]
    stream = repeating_inputs(fresh, 1000, 0.3, seed=3)
    assert len(stream) == 1000 and len(set(stream)) == 700
    seen: set[str] = set()
    repeats = 0
    for text in stream:
        repeats += text in seen
        seen.add(text)
    assert repeats == 300 and stream == repeating_inputs(fresh, 1000, 0.3, seed=3)


def test_each_shape_has_its_own_texts():
    opts = CacheBenchOptions(inputs=300)
    streams = workloads(opts, TokenCounter.for_model_dir(embedded_model_dir()))
    texts = [{t for r in s["requests"] for t in r.texts} for s in streams]
    assert not texts[0] & texts[1]
    assert [s["distinct_inputs"] for s in streams] == [210, 210]
    assert [len(s["requests"]) for s in streams] == [300, 19]


def test_the_summary_is_a_mean_over_rounds_with_ratios_to_off_in_the_same_round():
    def run(config, rnd, per_s, p50):
        return {"config": config, "round": rnd, "stream": 0, "inputs_per_s": per_s, "hit_ratio": 0.3,
                "latency_ms": {"p50": p50, "p99": 2 * p50}, "errors": {}}

    result = {"configs": ["off", "memory"], "streams": [{"inputs_per_request": 1, "concurrency": 8}],
              "runs": [run("off", 0, 100, 10), run("memory", 0, 150, 5), run("off", 1, 50, 20),
                       run("memory", 1, 100, 10)]}
    result["summary"] = summarize(result)
    memory = result["summary"][1]
    assert memory["inputs_per_s"] == 125 and memory["throughput_vs_off"] == 1.75 and memory["p50_vs_off"] == 0.5
    assert "| 1 | 8 | memory | 125.0 | 1.75x |" in markdown(result)
