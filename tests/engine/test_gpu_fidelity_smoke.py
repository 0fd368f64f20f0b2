"""The GPU fidelity benchmark runs end to end (tiny shape, CPU); the real run needs a GPU."""

from __future__ import annotations

import json

import pytest

from gigarouter.bench import gpu_fidelity


def test_tiny_run_on_cpu(tmp_path):
    report = gpu_fidelity.main(["--tiny", "--device", "cpu", "--dir", str(tmp_path / "ckpt"),
                                "--out", str(tmp_path / "r.json"), "--max-len", "300", "--tokens", "1024"])
    assert json.loads((tmp_path / "r.json").read_text())["config"]["num_hidden_layers"] == 2
    for run in report["runs"]:
        assert run["lengths"] == [1, 7, 64, 300]
        assert min(run["bf16_vs_fp32_cosine"]) > 0.999
        assert min(run["batch_vs_one_by_one_cosine"]) > 0.9999
        assert run["attention_path"] == "grid" and run["path_ok"] and set(run["attention_calls"]) == {"grid"}


def test_a_run_on_another_path_than_intended_fails(tmp_path):
    with pytest.raises(SystemExit, match="not the intended 'varlen' path"):
        gpu_fidelity.main(["--tiny", "--device", "cpu", "--dir", str(tmp_path / "ckpt"), "--max-len", "7",
                           "--tokens", "64", "--expect-path", "varlen"])
