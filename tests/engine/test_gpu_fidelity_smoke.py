"""The GPU fidelity benchmark runs end to end (tiny shape, CPU); the real run needs a GPU."""

from __future__ import annotations

import json

from gigarouter.bench import gpu_fidelity


def test_tiny_run_on_cpu(tmp_path):
    report = gpu_fidelity.main(["--tiny", "--device", "cpu", "--dir", str(tmp_path / "ckpt"),
                                "--out", str(tmp_path / "r.json"), "--max-len", "300", "--tokens", "1024"])
    assert json.loads((tmp_path / "r.json").read_text())["config"]["num_hidden_layers"] == 2
    for run in report["runs"]:
        assert run["lengths"] == [1, 7, 64, 300]
        assert min(run["bf16_vs_fp32_cosine"]) > 0.999
        assert min(run["batch_vs_one_by_one_cosine"]) > 0.9999
