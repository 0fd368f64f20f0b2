"""Folding py-spy's raw stacks into pipeline stages (pure function, no py-spy needed)."""

from __future__ import annotations

import pytest

from gigarouter.bench.profile import busy_shares, summarize_raw

RAW = """\
thread (1): MainThread;run (asyncio/runners.py:118);select (selectors.py:468);EpollSelector.select (selectors.py:468) 60
thread (1): MainThread;run (uvicorn/server.py:60);create_embeddings (gigarouter/api/routes/embeddings.py:60);_dumps (gigarouter/api/routes/embeddings.py:125) 10
thread (1): MainThread;run (uvicorn/server.py:60);H11Protocol.data_received (uvicorn/protocols/http/h11_impl.py:1) 30
thread (7): device-all-minilm-l6-v2_0;_worker (concurrent/futures/thread.py:83);TorchEngine.embed (gigarouter/engine/runner.py:50);BertModel.forward (gigarouter/engine/models/bert.py:1);Linear.forward (torch/nn/modules/linear.py:134) 75
thread (7): device-all-minilm-l6-v2_0;_worker (concurrent/futures/thread.py:83);TorchEngine.embed (gigarouter/engine/runner.py:50);attend (gigarouter/engine/models/attention.py:80) 20
thread (7): device-all-minilm-l6-v2_0;_worker (concurrent/futures/thread.py:81) 5
"""


def test_stacks_fold_into_stages_per_thread():
    s = summarize_raw(RAW)
    loop, device = s["event loop (main thread)"], s["device threads (mean of each)"]
    assert loop["samples"] == 100 and device["samples"] == 100
    assert loop["shares"]["idle"] == pytest.approx(0.6)
    assert loop["shares"]["response: normalise + JSON/base64"] == pytest.approx(0.1)
    assert device["shares"] == pytest.approx({"linear layers": 0.75, "attention (grid + sdpa)": 0.2, "idle": 0.05})
    busy = busy_shares(s)
    assert busy["device threads (mean of each)"]["busy_fraction"] == pytest.approx(0.95)
    assert busy["event loop (main thread)"]["shares"]["HTTP server + framework (uvicorn, h11, starlette, fastapi)"] \
        == pytest.approx(0.75)


def test_a_main_thread_inside_uvloop_counts_as_idle():
    raw = ("thread (1): MainThread;Server.run (uvicorn/server.py:86);asyncio_run (uvicorn/_compat.py:30);"
           "Runner.run (asyncio/runners.py:118) 9\n"
           "thread (1): MainThread;Runner.run (asyncio/runners.py:118);create_embeddings "
           "(gigarouter/api/routes/embeddings.py:60) 1\n")
    assert summarize_raw(raw)["event loop (main thread)"]["shares"]["idle"] == pytest.approx(0.9)
