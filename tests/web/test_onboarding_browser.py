"""In headless Chromium: the operator opens the onboarding queue, starts a run with the button, watches its
progress, and sees the measured numbers on the model page; a run against a provider that does not serve the
model fails with its reason shown."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.onboarding import tiny_tasks  # noqa: F401  (registers TinySTS in this process, where the server runs)
from tests.onboarding.test_pipeline import MINILM_BAR
from tests.web.conftest import ADMIN_EMAIL, PASSWORD, LiveServer, sign_in_as_admin
from tests.web.test_browser import shoot

pytestmark = pytest.mark.browser


def sign_in(page, live: LiveServer) -> None:
    import httpx

    with httpx.Client(base_url=live.base_url, timeout=30) as client:
        sign_in_as_admin(client, live)            # makes sure the admin exists
    page.goto("/signin?next=/admin/onboarding")
    page.get_by_label("Email").fill(ADMIN_EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Password").press("Enter")
    page.get_by_role("heading", name="Onboarding queue").wait_for()


def test_start_a_run_with_the_button_watch_it_and_see_the_measured_numbers(page, live: LiveServer) -> None:
    sign_in(page, live)
    shoot(page, "admin-onboarding")          # nothing scrolls sideways at phone width; docs/screenshots
    page.get_by_text("Start onboarding all-MiniLM-L6-v2").click()
    page.get_by_label("MTEB tasks").last.fill("TinySTS")
    page.locator("#sample-all-minilm-l6-v2").fill("16")
    page.locator("#tasks-all-minilm-l6-v2").press("Enter")
    run = page.locator("#run-all-minilm-l6-v2")
    expect(run).to_contain_text("running", timeout=10_000)          # shown at once, progress polled
    expect(page.locator("#run-all-minilm-l6-v2 .badge")).to_have_text("passed", timeout=120_000)
    page.goto("/models/all-minilm-l6-v2")
    measured = page.locator("#measured")
    expect(measured).to_contain_text("MTEB TinySTS")
    expect(measured).to_contain_text("Measured (gigarouter)")
    text = measured.inner_text()
    cosine = re.search(r"lowest cosine to the reference implementation.*?\s(1\.0+|0\.\d{6})", text, re.S)
    assert cosine and float(cosine.group(1)) >= MINILM_BAR, text   # the bar of this CPU's auto precision
    expect(page.locator("#status-h")).to_have_text("live now")
    measured.scroll_into_view_if_needed()
    shoot(page, "model-measured")


def test_a_run_against_a_provider_without_the_model_fails_with_its_reason(page, live: LiveServer) -> None:
    sign_in(page, live)
    page.get_by_text("Start onboarding SFR-Embedding-Mistral").click()
    page.locator("#provider-sfr-embedding-mistral").fill(f"{live.base_url}/v1")
    page.locator("#tasks-sfr-embedding-mistral").fill("TinySTS")
    page.locator("#sample-sfr-embedding-mistral").fill("8")
    page.locator("#tasks-sfr-embedding-mistral").press("Enter")
    expect(page.locator("#run-sfr-embedding-mistral .badge")).to_have_text("failed", timeout=60_000)
    expect(page.locator("#run-sfr-embedding-mistral")).to_contain_text("fidelity: ProbesMissing")
    page.goto("/models/sfr-embedding-mistral")
    expect(page.locator("#status-reason")).to_contain_text("no reference probe vectors")
