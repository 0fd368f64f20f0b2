"""The dashboard shows the account's batch jobs with their progress, and only its own."""

from __future__ import annotations

import re

import httpx

from tests.batches.helpers import MODEL, client_for, jsonl, request_line, submit, wait_done
from tests.web.conftest import LiveServer, sign_up
from tests.web.test_pages import text_of


def test_the_dashboard_shows_batch_progress(client: httpx.Client, live: LiveServer) -> None:
    _, key = sign_up(client)
    assert "No batch jobs yet" in text_of(client.get("/dashboard").text)
    lines = [request_line(f"r{i}", {"model": MODEL, "input": f"dashboard text {i}"}) for i in range(3)]
    batch = wait_done(client_for(live.base_url, key), submit(client_for(live.base_url, key),
                                                             jsonl([*lines, "not json"])).id)
    assert batch.status == "completed"

    page = client.get("/dashboard").text
    section = re.search(r'<section aria-labelledby="batches-h".*?</section>', page, re.S).group(0)
    assert batch.id in section and 'max="4" value="4"' in section
    row = text_of(section)
    assert "completed" in row and "4 of 4" in row and f"${batch.model_extra['cost_usd']}" in row

    with httpx.Client(base_url=live.base_url) as stranger:    # another account does not see it
        sign_up(stranger)
        assert batch.id not in stranger.get("/dashboard").text


def test_batch_progress_fits_a_phone(browser, live: LiveServer) -> None:
    """At 390 px the batches table stacks into cards: no sideways scroll, the progress bar shows."""
    from playwright.sync_api import expect

    from tests.web.test_browser import PHONE, layout_problems, new_email, sign_up_in_browser

    context = browser.new_context(viewport=PHONE, base_url=live.base_url)
    context.set_default_timeout(15_000)
    try:
        page = context.new_page()
        key = sign_up_in_browser(page, new_email("batch-phone"))
        openai_client = client_for(live.base_url, key)
        lines = [request_line(f"r{i}", {"model": MODEL, "input": f"phone text {i}"}) for i in range(2)]
        wait_done(openai_client, submit(openai_client, jsonl(lines)).id)
        page.goto("/dashboard#batches")
        expect(page.locator("table.batches progress").first).to_be_visible()
        assert not layout_problems(page), layout_problems(page)
    finally:
        context.close()
