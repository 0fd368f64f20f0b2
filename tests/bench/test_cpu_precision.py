"""The OpenVINO peer's launch line and the cpu-precision table (the peer itself needs its own venv)."""

from __future__ import annotations

import ast
from pathlib import Path

from gigarouter.bench import servers
from gigarouter.bench.cpu_precision import PEER_SCRIPT, markdown


def test_the_peer_runs_from_its_own_python_with_its_folder_off_the_path():
    spec = servers.openvino_spec(17998, python=Path("/venv/bin/python"), model_dir=Path("/models/minilm"))
    assert spec.argv[:3] == ("/venv/bin/python", "-P", str(PEER_SCRIPT))
    assert spec.argv[3] == "serve" and "--precision" in spec.argv and spec.url == "http://127.0.0.1:17998"
    assert spec.embeddings_path == "/v1/embeddings" and spec.ready_path == "/health"


def test_the_peer_imports_nothing_of_gigarouter():
    tree = ast.parse(PEER_SCRIPT.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(name.startswith("gigarouter") for name in imported)


def test_the_table_gives_ratios_to_our_fp32_and_the_fraction_of_peak():
    peak = {"float32": {"best_flops": 100e9, "sizes": [1024]}, "bfloat16": {"best_flops": 400e9, "sizes": [1024]}}
    result = {"matmul": peak, "matmul_end": peak, "load_average_start": [1.0], "load_average_end": [2.0],
              "rows": [{"engine": "gigarouter Embedder, float32", "precision": "float32", "min_cosine": 0.9999998,
                        "mean_cosine": 1.0, "below_0.99997": 0, "inputs_per_s": 50.0, "per_round": [50.0],
                        "gflops": 40.0, "fraction_of_matmul_peak": 0.4, "peak_dtype": "float32"},
                       {"engine": "openvino", "precision": "openvino f32", "min_cosine": 0.9999999,
                        "mean_cosine": 1.0, "below_0.99997": 0, "inputs_per_s": 25.0, "per_round": [25.0]}]}
    text = markdown(result)
    assert "| openvino | 25.0 | 25 | 0.50x |" in text
    assert "40% of float32" in text and "float32 100.0" in text and "bfloat16 400.0" in text
