"""The batch settings: defaults as documented, bad values refused, the files directory under data_dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from gigarouter.settings import ConfigError, Settings, load_settings


def test_defaults_and_the_files_directory(tmp_path):
    settings = Settings(data_dir=tmp_path)
    assert (settings.batch_max_file_bytes, settings.batch_max_lines, settings.batch_max_queued_per_account,
            settings.batch_discount, settings.batch_concurrency) == (200 * 1024 * 1024, 50_000, 500_000, 0.5, 8)
    assert settings.resolved_batch_files_dir == tmp_path / "batch-files"
    config = tmp_path / "c.toml"
    config.write_text('batch_files_dir = "~/batches"\nbatch_discount = 0.3\n')
    loaded = load_settings(config)
    assert loaded.resolved_batch_files_dir == Path("~/batches").expanduser() and loaded.batch_discount == 0.3


@pytest.mark.parametrize("change", [{"batch_discount": 1.5}, {"batch_discount": -0.1}, {"batch_discount": True},
                                    {"batch_max_lines": 0}, {"batch_concurrency": 0},
                                    {"batch_max_file_bytes": 1.5}, {"batch_max_queued_per_account": -1}])
def test_bad_values_are_refused(change, tmp_path):
    with pytest.raises(ConfigError):
        Settings(data_dir=tmp_path, **change)
