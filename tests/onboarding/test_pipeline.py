"""`gigarouter onboard`: fidelity, MTEB quality and speed through the real serving path, recorded in the
database, moving the model's status; in-process and against a running server over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gigarouter import Embedder
from gigarouter.accounts import migrations
from gigarouter.accounts.db import make_engine
from gigarouter.catalog.cards import find_card
from gigarouter.cli import app
from gigarouter.engine.precision import choose_precision, cpu_flags
from gigarouter.onboarding import fidelity
from gigarouter.onboarding.pipeline import Options, onboard
from gigarouter.onboarding.store import BENCHMARKING, COMING_SOON, LIVE, OnboardingStore
from gigarouter.onboarding.targets import HttpTarget, InProcessTarget
from gigarouter.settings import Settings
from tests.conftest import live_server
from tests.engine.test_bert_parity import BARS
from tests.engine.test_parity import AUTO_COSINE

MINILM = find_card("all-minilm-l6-v2")
#: the min cosine the default model keeps to sentence-transformers in this CPU's auto precision
MINILM_BAR = BARS[choose_precision("auto", device_type="cpu", flags=cpu_flags()).name][0]
FAST = {"speed_sample": 16, "latency_samples": 2}


@pytest.fixture(scope="module")
def embedder():
    with Embedder(settings=Settings(cache="off")) as e:
        yield e


@pytest.fixture
def store(tmp_path):
    url = f"sqlite:///{tmp_path / 'onboard.db'}"
    migrations.upgrade(url)
    engine = make_engine(url, pool_size=2)
    store = OnboardingStore(engine)
    yield store
    store.close()
    engine.dispose()



def bad_probes(tmp_path: Path) -> Path:
    """The card's probe file with every reference vector reversed: what a wrong deployment would match."""
    data = fidelity.load_probes(fidelity.card_probes(MINILM))
    for case in data["cases"]:
        case["vectors_one_by_one"] = [v[::-1] for v in case["vectors_one_by_one"]]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return path


def test_status_moves_coming_soon_benchmarking_live_and_out_of_live_with_a_reason(any_store):
    store = any_store
    assert store.statuses() == {}
    first = store.start("m", provider="in-process", commit="abc1234", device="cpu", versions={"torch": "2.13.0"})
    assert store.statuses()["m"].status == BENCHMARKING and first.state == "running"
    store.finish(first.id, results={"speed": {"passed": True}}, reason=None)
    assert store.statuses()["m"].status == LIVE
    second = store.start("m", provider="in-process", commit="abc1234", device="cpu", versions={})
    assert store.statuses()["m"].status == LIVE          # re-checked while it keeps serving
    store.finish(second.id, results={}, reason="fidelity: lowest cosine 0.5 is under 0.999")
    status = store.statuses()["m"]
    assert status.status == COMING_SOON and "0.5" in status.reason and status.run_id == second.id
    assert store.latest_passed()["m"].id == first.id and store.latest_runs()["m"].id == second.id
    assert [r.state for r in store.runs("m")] == ["failed", "passed"]


def test_in_process_run_passes_records_and_goes_live_then_a_failing_run_takes_it_out(embedder, store, tmp_path):
    target = InProcessTarget(embedder)
    summary = onboard("all-minilm-l6-v2", MINILM, target, store=store,
                      options=Options(tasks=["TinyRetrieval", "TinySTS"], **FAST))
    assert summary["passed"], summary["reason"]
    run = store.run(summary["run_id"])
    fid, quality, speed = (run.results[k] for k in ("fidelity", "quality", "speed"))
    assert fid["min_cosine"] >= MINILM_BAR and fid["texts"] == 10 and "sentence-transformers" in fid["reference"]
    assert quality["scores"]["TinyRetrieval"] >= 75 and quality["scores"]["TinySTS"] >= 70
    assert quality["tasks"] == ["TinyRetrieval", "TinySTS"]
    assert speed["tokens_per_second"] > 0 and speed["tokens"] > 16 and speed["query_latency_ms_p50"] > 0
    assert run.device.startswith("cpu") and run.versions["mteb"].startswith("2.") and run.finished_at
    assert store.statuses()["all-minilm-l6-v2"].status == LIVE

    failing = onboard("all-minilm-l6-v2", MINILM, target, store=store,
                      options=Options(tasks=["TinySTS"], probes=bad_probes(tmp_path), **FAST))
    assert not failing["passed"] and failing["reason"].startswith("fidelity: lowest cosine")
    status = store.statuses()["all-minilm-l6-v2"]
    assert status.status == COMING_SOON and status.reason == failing["reason"]
    assert store.latest_passed()["all-minilm-l6-v2"].id == run.id       # the page keeps the measured numbers


def test_a_step_that_cannot_run_fails_the_run_with_its_message(embedder, store):
    no_card_tasks = onboard("all-minilm-l6-v2", MINILM, InProcessTarget(embedder), store=store,
                            options=Options(**FAST))
    assert not no_card_tasks["passed"]
    assert no_card_tasks["reason"].startswith("quality: NoTasks: no MTEB tasks")
    assert no_card_tasks["results"]["fidelity"]["passed"] and no_card_tasks["results"]["speed"]["passed"]


def test_a_running_server_over_http_is_compared_the_same_way(tmp_path, store):
    with live_server(Settings(data_dir=tmp_path / "srv", cache="off")) as base:
        target = HttpTarget(f"{base}/v1", "all-MiniLM-L6-v2")
        summary = onboard("all-minilm-l6-v2", MINILM, target, store=store,
                          options=Options(tasks=["TinySTS"], **FAST))
        target.close()
    assert summary["passed"], summary["reason"]
    run = store.run(summary["run_id"])
    assert run.provider == f"{base}/v1" and run.device == f"provider {base}/v1"
    assert run.results["fidelity"]["min_cosine"] >= MINILM_BAR and run.results["speed"]["tokens"] > 0


def test_an_unreachable_provider_fails_every_step_with_the_reason(store):
    target = HttpTarget("http://127.0.0.1:9/v1", "all-MiniLM-L6-v2", timeout=2)
    summary = onboard("all-minilm-l6-v2", MINILM, target, store=store, options=Options(tasks=["TinySTS"], **FAST))
    assert not summary["passed"] and "ProviderError" in summary["reason"] and "127.0.0.1:9" in summary["reason"]
    assert store.statuses()["all-minilm-l6-v2"].status == COMING_SOON


def test_cli_onboards_in_process_and_writes_the_dated_result(tmp_path):
    out = tmp_path / "result.json"
    result = CliRunner().invoke(app, ["onboard", "all-MiniLM-L6-v2", "--tasks", "TinySTS", "--speed-sample", "16",
                                      "--latency-samples", "2", "--database-url",
                                      f"sqlite:///{tmp_path / 'cli.db'}", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "passed" in result.output and "tokens/s" in result.output
    summary = json.loads(out.read_text())
    assert summary["state"] == "passed" and summary["results"]["quality"]["scores"]["TinySTS"] > 70
    engine = make_engine(f"sqlite:///{tmp_path / 'cli.db'}")
    assert OnboardingStore(engine).statuses()["all-minilm-l6-v2"].status == LIVE
    engine.dispose()


def test_cli_failing_run_exits_1_and_bad_names_exit_2(tmp_path):
    db = ["--database-url", f"sqlite:///{tmp_path / 'cli.db'}"]
    failing = CliRunner().invoke(app, ["onboard", "all-MiniLM-L6-v2", "--tasks", "TinySTS", "--speed-sample", "16",
                                       "--latency-samples", "1", "--probes", str(bad_probes(tmp_path)), *db])
    assert failing.exit_code == 1 and "failed" in failing.output and "fidelity" in failing.output
    unknown = CliRunner().invoke(app, ["onboard", "no-such-model", *db])
    assert unknown.exit_code == 2 and "neither a catalog model" in unknown.output
    not_served = CliRunner().invoke(app, ["onboard", "linq-embed-mistral", *db])
    assert not_served.exit_code == 2 and "--provider" in not_served.output


def test_fidelity_against_the_e5_goldens_recorded_by_the_card_code():
    """The tiny Linq checkpoint through the Embedder vs tests/fixtures/golden/e5.json (the model-card code)."""
    from gigarouter.settings import ModelConfig

    linq = Path(__file__).resolve().parents[1] / "fixtures" / "tiny" / "linq"
    golden = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "e5.json"
    config = ModelConfig(name="linq-embed-mistral", recipe="e5", weights=str(linq))
    with Embedder(config, settings=Settings(cache="off")) as e:
        result = fidelity.run_fidelity(InProcessTarget(e), fidelity.load_probes(golden))
    assert result["passed"] and result["min_cosine"] > AUTO_COSINE and result["texts"] == 24
    assert np.isclose(min(c["min_cosine"] for c in result["cases"]), result["min_cosine"])


def test_a_missing_mteb_names_the_extra_that_brings_it():
    from gigarouter.extras import hint_for

    hint = hint_for(ModuleNotFoundError("No module named 'mteb'", name="mteb"))
    assert "pip install 'gigarouter[onboard]'" in str(hint) and "torch first" in str(hint)


def test_the_cards_benchmark_columns_name_their_mteb_tasks():
    from gigarouter.onboarding.quality import card_columns

    columns = card_columns(find_card("linq-embed-mistral"))
    assert len(columns["Retrieval (15 datasets)"]) == 15 and "SciFact" in columns["Retrieval (15 datasets)"]
    assert len(columns["Average (56 datasets)"]) == 56                      # the mteb benchmark, resolved
    assert set(columns["Retrieval (15 datasets)"]) <= set(columns["Average (56 datasets)"])


def test_a_column_measured_below_the_published_number_fails_quality(embedder, store):
    """A card column over the tiny tasks: measured as their mean, compared with the published number."""
    from dataclasses import replace

    card = replace(MINILM, mteb_tasks={"Tiny (2 datasets)": ["TinyRetrieval", "TinySTS"]})
    target = InProcessTarget(embedder)
    close = onboard("all-minilm-l6-v2", card, target, store=store,
                    options=Options(published={"Tiny (2 datasets)": 90.0}, **FAST))
    quality = close["results"]["quality"]
    assert close["passed"] and quality["tasks"] == ["TinyRetrieval", "TinySTS"]
    assert quality["columns"]["Tiny (2 datasets)"] == pytest.approx(
        (quality["scores"]["TinyRetrieval"] + quality["scores"]["TinySTS"]) / 2, abs=0.01)
    far = onboard("all-minilm-l6-v2", card, target, store=store,
                  options=Options(published={"Tiny (2 datasets)": 99.9}, max_drop=0.5, **FAST))
    assert not far["passed"]
    assert far["reason"].startswith("quality: MTEB below the card's numbers (Tiny (2 datasets) 99.9 published")
