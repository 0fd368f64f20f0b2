"""Host work per pass: op counts at the 7B shape on the meta device, and the host planning share."""

from __future__ import annotations

from gigarouter.bench.host_overhead import ops_per_pass, planning_ms


def test_the_varlen_pass_launches_the_same_ops_whatever_the_batch_and_fewer_than_the_grid():
    query = ops_per_pass([16], "varlen", layers=4)          # 7B widths, 4 of its 32 layers
    mixed = ops_per_pass([300, 17, 5, 1], "varlen", layers=4)
    grid = ops_per_pass([300, 17, 5, 1], "grid", layers=4)
    assert query["launching_ops"] == mixed["launching_ops"] < grid["launching_ops"]
    assert query["launching_ops"] < 40 * query["layers"]          # about 35 kernels per layer
    assert planning_ms([512] * 16, "varlen") < planning_ms([300, 200, 100, 50, 17, 5, 1] * 4, "grid")
