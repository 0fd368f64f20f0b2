"""`gigarouter serve`'s start-up report and keep_serving_on_load_failure."""

from __future__ import annotations

from types import SimpleNamespace

from fastapi.testclient import TestClient

from gigarouter.api.app import create_app
from gigarouter.errors import ModelLoadError
from gigarouter.extras import MissingExtra, hint_for, needs_psycopg
from gigarouter.serving import startup_state
from gigarouter.settings import ModelConfig, Settings, default_model
from tests.conftest import FakeEngine, fake_loader, wait_ready


def router(*states: str, probed: bool = True) -> SimpleNamespace:
    return SimpleNamespace(deployments=[SimpleNamespace(state=s) for s in states],
                           routes=[SimpleNamespace(probed=probed) for _ in states])


def test_startup_state():
    assert startup_state(router("ready", "loading"), keep_serving=False) == "loading"
    assert startup_state(router("ready", "ready", probed=False), keep_serving=False) == "loading"
    assert startup_state(router("ready", "ready"), keep_serving=False) == "ready"
    assert startup_state(router("loading", "failed"), keep_serving=False) == "failed"    # fail fast
    assert startup_state(router("loading", "failed"), keep_serving=True) == "loading"
    assert startup_state(router("ready", "failed"), keep_serving=True) == "ready"
    assert startup_state(router(), keep_serving=False) == "ready"                         # nothing local


def _one_fails(tmp_path, keep: bool) -> TestClient:
    good = fake_loader(FakeEngine())

    def loader(config: ModelConfig, settings: Settings):
        if config.name == "broken":
            raise ModelLoadError("model nobody/nothing is not in the local cache")
        return good(config, settings)

    broken = ModelConfig(name="broken", recipe="sbert", weights="nobody/nothing")
    settings = Settings(data_dir=tmp_path, models=(default_model(), broken), keep_serving_on_load_failure=keep)
    return TestClient(create_app(settings, loader=loader))


def test_ready_with_a_failed_model_only_when_keeping_the_others(tmp_path):
    with _one_fails(tmp_path, keep=True) as client:
        wait_ready(client)
        body = client.get("/ready").json()
        assert body["models"]["broken"].startswith("failed: model nobody/nothing")
        assert body["models"]["all-minilm-l6-v2"] == "ready"
    with _one_fails(tmp_path, keep=False) as client:
        client.get("/health")
        for _ in range(200):
            r = client.get("/ready")
            if "broken is failed" in r.text:
                break
        assert r.status_code == 503 and "broken is failed: model nobody/nothing" in r.json()["error"]["message"]


def test_optional_package_hints():
    assert needs_psycopg("postgresql://u@h/db") and needs_psycopg("postgresql+psycopg://u@h/db")
    assert not needs_psycopg("sqlite:///x.db") and not needs_psycopg(None)
    assert not needs_psycopg("postgresql+psycopg2://u@h/db")
    hint = hint_for(ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib"))
    assert isinstance(hint, MissingExtra) and "pip install 'gigarouter[bench]'" in str(hint)
    assert hint_for(ModuleNotFoundError("No module named 'numpy'", name="numpy")) is None
