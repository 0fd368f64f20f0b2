"""Peak host memory while loading a bf16 checkpoint stays under 1.25x its size (the 7B-on-24-GiB bar)."""

from __future__ import annotations

import pytest

from gigarouter.bench.load_memory import measure_in_subprocess, scaled_config, write_random_checkpoint

LIMIT = 1.25


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bf16") / "ckpt"
    size = write_random_checkpoint(directory, scaled_config(200), shards=2)
    assert 150e6 < size < 260e6
    return directory


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["mmap", "read"])
def test_peak_rss_while_loading_is_about_one_checkpoint(checkpoint, mode):
    result = measure_in_subprocess(checkpoint, mode=mode)
    # Every weight was touched after loading, so at least the checkpoint itself must show up...
    assert result["added_bytes"] >= 0.9 * result["checkpoint_bytes"], result
    # ...and not much more: no second copy of a shard, no float32 detour.
    assert result["ratio"] < LIMIT, result
