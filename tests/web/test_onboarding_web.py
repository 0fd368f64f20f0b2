"""Onboarding on the web: statuses and measured numbers on model pages and compare, the admin queue's access
and its errors, and a live cc-by-nc model's license next to its price."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from gigarouter.accounts.store import KeySpec
from gigarouter.api.app import create_app
from gigarouter.onboarding.store import OnboardingStore
from gigarouter.settings import ModelConfig, Settings
from tests.web.conftest import LiveServer, csrf_of, sign_in_as_admin, sign_up

SLUG = "sfr-embedding-mistral"       # coming soon on the test server (not served there)
RESULTS = {
    "fidelity": {"passed": True, "min_cosine": 0.999812, "texts": 24, "threshold": 0.999},
    "quality": {"passed": True, "tasks": ["ArguAna", "SciFact"], "scores": {"ArguAna": 61.2, "SciFact": 77.4},
                "columns": {"Retrieval (15 datasets)": 58.71}, "mteb": "2.26.24"},
    "speed": {"passed": True, "tokens_per_second": 43210.0, "query_latency_ms_p50": 12.5, "tokens": 1000},
}


def test_statuses_and_measured_numbers_show_on_the_model_page_and_compare(client: httpx.Client, live: LiveServer):
    store = OnboardingStore(live.gate.engine)
    run = store.start(SLUG, provider="https://gpu-box.example/v1", commit="abc1234", device="NVIDIA H100",
                      versions={"mteb": "2.26.24"})
    page = client.get(f"/models/{SLUG}").text
    assert "benchmarking now" in page and 'class="badge benchmarking"' in page
    assert "benchmarking" in client.get("/models?status=benchmarking").text.split("<tbody", 1)[1]

    store.finish(run.id, results=RESULTS, reason=None)
    page = client.get(f"/models/{SLUG}").text
    measured = page.split('id="measured"', 1)[1].split("</section>", 1)[0]
    row = re.search(r"Retrieval \(15 datasets\)</th>(.*?)</tr>", measured, re.S).group(1)
    assert "59.0" in row and "58.7" in row                  # the card's number, then ours, each labelled
    assert "Published (card)" in measured and "Measured (gigarouter)" in measured
    assert "0.999812" in measured and "43,210" in measured and "NVIDIA H100" in measured and "abc1234" in measured
    assert "ArguAna, SciFact" in measured and "mteb 2.26.24" in measured
    assert "not yet live" in page      # the run passed but nothing serves it here: not live on this server

    compare = client.get(f"/compare?models={SLUG},linq-embed-mistral").text
    rows = compare.split('class="bench measured"', 1)[1]
    assert "Retrieval (15 datasets) <span class=\"muted small\">measured</span>" in rows and "58.7" in rows
    assert "0.999812" in rows and "43,210" in rows

    failing = store.start(SLUG, provider="https://gpu-box.example/v1", commit="abc1234", device="NVIDIA H100",
                          versions={})
    store.finish(failing.id, results={}, reason="fidelity: lowest cosine to the reference 0.912000 is under 0.999")
    page = client.get(f"/models/{SLUG}").text
    reason = re.search(r'id="status-reason">(.*?)</p>', page, re.S).group(1)
    assert "0.912000" in reason
    assert "58.7" in page.split('id="measured"', 1)[1]        # the last passing run's numbers stay


def test_the_queue_is_for_operators_only(client: httpx.Client, live: LiveServer):
    from gigarouter.web.users import WebStore

    assert client.get("/admin/onboarding").headers["location"].startswith("/signin?next=/admin/onboarding")
    email, _ = sign_up(client)
    assert client.get("/admin/onboarding").status_code == 403           # any web user: no
    account = WebStore(live.gate.engine).user_by_email(email).account_id
    admin_key = live.gate.store.create_key(account, KeySpec(scopes=frozenset({"admin"})))
    assert client.get("/admin/onboarding").status_code == 200           # an admin-scoped key: yes
    live.gate.store.revoke_key(admin_key.info.id)
    assert client.get("/admin/onboarding").status_code == 403           # revoked: no again


def test_the_queue_ranks_by_votes_and_refuses_bad_starts(client: httpx.Client, live: LiveServer):
    voter = httpx.Client(base_url=live.base_url, timeout=30)
    sign_up(voter)
    token = csrf_of(voter.get("/models/linq-embed-mistral").text)
    voter.post("/models/linq-embed-mistral/vote", data={"action": "vote", "csrf_token": token})
    voter.close()
    sign_in_as_admin(client, live)
    page = client.get("/admin/onboarding").text
    waiting = page.split('id="waiting-h"', 1)[1].split("</table>", 1)[0]
    votes = [int(v) for v in re.findall(r'data-label="Votes" class="num">(\d+)<', waiting)]
    assert votes == sorted(votes, reverse=True) and votes[0] >= 1
    assert "all-MiniLM-L6-v2" not in waiting                      # live: in the "check again" table
    assert "all-MiniLM-L6-v2" in page.split('id="live-h"', 1)[1]

    token = csrf_of(page)
    not_served = client.post("/admin/onboarding/e5-mistral-7b-instruct/start", data={"csrf_token": token})
    assert not_served.status_code == 400 and "not served by this server" in not_served.text
    bad_url = client.post("/admin/onboarding/e5-mistral-7b-instruct/start",
                          data={"csrf_token": token, "provider": "ftp://x"})
    assert bad_url.status_code == 400 and "http(s) base URL" in bad_url.text
    no_csrf = client.post("/admin/onboarding/e5-mistral-7b-instruct/start", data={})
    assert no_csrf.status_code == 403
    missing = client.get("/admin/onboarding/runs/onb_nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "run_not_found"


@pytest.fixture(scope="module")
def linq_served(tmp_path_factory: pytest.TempPathFactory):
    """Open mode, the tiny Linq checkpoint served as linq-embed-mistral (cc-by-nc-4.0): live here."""
    linq = Path(__file__).resolve().parents[1] / "fixtures" / "tiny" / "linq"
    settings = Settings(data_dir=tmp_path_factory.mktemp("nc"), batch_token_budget=1024,
                        models=(ModelConfig(name="linq-embed-mistral", recipe="e5", weights=str(linq)),))
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        deadline = time.monotonic() + 120
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield client


def test_a_live_non_commercial_model_shows_its_license_where_the_price_is(linq_served: TestClient):
    page = linq_served.get("/models/linq-embed-mistral").text
    price = re.search(r'<dd id="price">(.*?)</dd>', page, re.S).group(1)
    assert "$0.008" in price and "CC-BY-NC-4.0: non-commercial" in price and "estimated" not in price
    assert "We want it" not in page and "tell us you want it" not in page
    listing = linq_served.get("/models").text
    assert "CC-BY-NC-4.0: non-commercial" in listing
    assert "CC-BY-NC-4.0: non-commercial" in linq_served.get("/compare?models=linq-embed-mistral").text
    # a coming-soon page keeps its estimate and its vote ask
    soon = linq_served.get("/models/sfr-embedding-mistral").text
    soon_price = re.search(r'<dd id="price">(.*?)</dd>', soon, re.S).group(1)
    assert "est. price" in soon and "~$" in soon_price and "non-commercial" not in soon_price
    assert "We want it" in soon or "Sign in to vote" in soon or "Voting needs accounts" in soon


def test_a_start_while_another_process_runs_that_model_is_409_until_that_process_dies(client: httpx.Client,
                                                                                     live: LiveServer):
    """One run per model across processes: a `gigarouter onboard` elsewhere (a worker here) holds it."""
    import sqlalchemy as sa

    from gigarouter.onboarding.store import ABANDONED, model_status, onboarding_runs
    from tests.onboarding.helpers import Holder

    slug = "e5-mistral-7b-instruct"
    holder = Holder(live.settings.resolved_database_url, slug)
    try:
        sign_in_as_admin(client, live)
        token = csrf_of(client.get("/admin/onboarding").text)
        busy = client.post(f"/admin/onboarding/{slug}/start",
                           data={"csrf_token": token, "provider": "http://127.0.0.1:9/v1"})
        assert busy.status_code == 409 and "being onboarded already" in busy.text
        holder.kill()
        store = OnboardingStore(live.gate.engine, liveness=live.gate.liveness)
        assert store.abandon_dead(model=slug) == 1 and store.run(holder.run_id).reason == ABANDONED
    finally:
        holder.close()
        with live.gate.engine.begin() as conn:      # what this test made: the page stays as other tests see it
            conn.execute(sa.delete(onboarding_runs).where(onboarding_runs.c.model == slug))
            conn.execute(sa.delete(model_status).where(model_status.c.model == slug))
