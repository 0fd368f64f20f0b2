"""End to end in headless Chromium: sign up, copy the key, call the API, watch the dashboard; vote; try;
compare; and reach every control with the keyboard alone. Takes the screenshots in docs/screenshots."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import expect

from gigarouter.settings import Settings
from tests.conftest import FakeEngine, fake_loader, live_server
from tests.web.conftest import PASSWORD, SCREENSHOTS, LiveServer, new_email
from tests.web.test_providers import EAST

pytestmark = pytest.mark.browser

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
#: What keyboard users must be able to reach: everything focusable that is shown.
FOCUSABLE = ("a[href], button:not([disabled]), input:not([type=hidden]):not([disabled]), select, textarea, "
             "summary, [tabindex]:not([tabindex='-1'])")


def sign_up_in_browser(page, email: str, *, go: bool = True) -> str:
    """Sign up through the form with the keyboard only; returns the key the page showed.

    ``go=False``: the sign-up page is open already (a link led there).
    """
    if go:
        page.goto("/signup")
    # A link's click returns before its page has loaded: a Tab then lands on the old page's body.
    page.get_by_label("Email").wait_for()
    page.keyboard.press("Tab")                      # skip link first
    assert page.evaluate("document.activeElement.textContent.trim()") == "skip to content"
    page.get_by_label("Email").focus()
    page.keyboard.type(email)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="Welcome to gigarouter").wait_for()
    return page.locator("#api-key").inner_text().strip()


def shoot(page, name: str) -> None:
    """Desktop and phone screenshots of the current page into docs/screenshots/.

    At phone width nothing scrolls sideways: not the page, and no table hides columns in a scroll box of
    its own (only code blocks may scroll inside themselves).
    """
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(size)
        problems = layout_problems(page)
        assert not problems, f"{page.url} at {size['width']} px: {problems}"
        page.screenshot(path=str(SCREENSHOTS / f"{name}-{label}.png"), full_page=True)
    page.set_viewport_size(DESKTOP)


#: Per table, what each row must show at any width: the cells a reader needs to tell rows apart and
#: act on them. At phone width each labelled cell must also show its label (the stacked layout).
KEY_CELLS = {
    "table.catalog": ["th[scope=row] a", "td.pick input", "td[data-label=Status]", "td[data-label=License]",
                      "td[data-label='Price / 1M tokens']"],
    "table.compare": ["th[scope=row]", "td"],
    "table.bench": ["th[scope=row]", "td"],
    "table.keys": ["th[scope=row]", "td[data-label=Key]", "td[data-label=Status]"],
    "table.providers": ["th[scope=row]", "td[data-label=State]", "td[data-label='Price / 1M tokens']"],
    "table.usage-models": ["th[scope=row]", "td"],
}


def layout_problems(page) -> list[str]:
    """What scrolls sideways, and which key cells of which table rows are not visible within the page."""
    return page.evaluate(
        """(keyCells) => {
          const problems = [];
          const doc = document.documentElement, width = doc.clientWidth;
          if (doc.scrollWidth > width) problems.push(`the page is ${doc.scrollWidth} px wide`);
          for (const box of document.querySelectorAll('.scroll, .chart-box')) {
            if (box.getClientRects().length && box.scrollWidth > box.clientWidth + 1)
              problems.push(`a scroll box (${box.getAttribute('aria-label') || box.getAttribute('aria-labelledby')}) `
                            + `hides ${box.scrollWidth - box.clientWidth} px sideways`);
          }
          const stacked = width <= 44 * 16;
          for (const [selector, cells] of Object.entries(keyCells)) {
            for (const table of document.querySelectorAll(selector)) {
              if (!table.getClientRects().length) continue;         // in a closed <details>
              for (const row of table.querySelectorAll('tbody tr')) {
                if (!row.querySelector('th[scope=row]')) continue;   // an empty-state or group-heading row
                const name = row.querySelector('th[scope=row]').textContent.trim().slice(0, 30);
                for (const cell of cells) {
                  const found = [...row.querySelectorAll(cell)];
                  if (!found.length) problems.push(`${selector} ${name}: no ${cell}`);
                  for (const el of found) {
                    const r = el.getBoundingClientRect();
                    if (!r.width || !r.height || r.left < -0.5 || r.right > width + 0.5)
                      problems.push(`${selector} ${name}: ${cell} not visible `
                                    + `(${Math.round(r.left)}..${Math.round(r.right)})`);
                    if (stacked && el.dataset.label !== undefined && table.matches('.stack, .providers')) {
                      const label = getComputedStyle(el, '::before').content;
                      if (label !== JSON.stringify(el.dataset.label))
                        problems.push(`${selector} ${name}: ${cell} shows no label (${label})`);
                    }
                  }
                }
              }
            }
          }
          return problems;
        }""", KEY_CELLS)


def test_sign_up_copy_key_call_api_and_see_usage_and_balance(page, live: LiveServer) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live.base_url)
    page.goto("/models")
    page.get_by_role("link", name="sign up · free credit").click()
    shown = sign_up_in_browser(page, "ada@example.com")
    page.get_by_role("button", name="Copy key").click()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == shown and re.fullmatch(r"gr-[a-z0-9]{10}-[A-Za-z0-9]{40}", copied)

    page.get_by_role("link", name="Go to your dashboard").click()
    assert page.locator("#balance").inner_text() == "$1.00"
    assert "No requests yet" in page.content()

    # "hello world" twice: the second time its 4 tokens come from the account's cache entries.
    for texts in (["hello world"], ["the quick brown fox", "jumps over the lazy dog"], ["again", "hello world"]):
        r = httpx.post(live.url("/v1/embeddings"), json={"model": "all-minilm-l6-v2", "input": texts},
                       headers={"Authorization": f"Bearer {copied}"}, timeout=30)
        assert r.status_code == 200, r.text

    page.reload()
    balance = page.locator("#balance").inner_text()
    assert balance.startswith("$0.99999") and balance != "$1.00"
    assert int(page.locator("#total-tokens").inner_text().replace(",", "")) > 0
    assert page.locator("#total-cached").inner_text() == "4 from the cache"
    assert page.locator("table.usage-models").get_by_role("rowheader", name="all-minilm-l6-v2").is_visible()
    assert page.locator("svg#usage-days rect").count() == 30
    assert page.locator("svg#usage-models rect").count() == 1
    shoot(page, "dashboard")


def test_keys_are_created_and_revoked_in_the_browser(page, live: LiveServer) -> None:
    sign_up_in_browser(page, new_email("keys"))
    page.goto("/dashboard")
    page.get_by_label("New key name").fill("laptop")
    page.get_by_role("button", name="Create key").click()
    key = page.locator("#api-key").inner_text().strip()
    ok = httpx.post(live.url("/v1/embeddings"), json={"model": "all-minilm-l6-v2", "input": "x"},
                    headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert ok.status_code == 200
    page.get_by_role("button", name="Revoke key laptop").click()
    page.get_by_text("The key is revoked").wait_for()
    refused = httpx.post(live.url("/v1/embeddings"), json={"model": "all-minilm-l6-v2", "input": "x"},
                         headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert refused.status_code == 401


def test_vote_and_see_the_count(page, live: LiveServer) -> None:
    slug = _coming_soon_slug() or "all-minilm-l6-v2"
    page.goto(f"/models/{slug}")
    page.get_by_role("link", name="Sign in to vote").click()
    assert "/signin" in page.url
    sign_up_in_browser(page, new_email("voter"))
    page.goto(f"/models/{slug}")
    before = int(page.locator("#vote-count").inner_text())
    page.get_by_role("button", name="We want it").click()
    page.get_by_text("Thanks: your vote is counted.").wait_for()
    assert int(page.locator("#vote-count").inner_text()) == before + 1
    assert page.get_by_role("button", name="Withdraw my vote").is_visible()
    page.goto("/models?sort=wanted")
    first_row = page.locator("table.catalog tbody tr").first
    assert slug in first_row.get_by_role("link").first.get_attribute("href")
    if slug != "all-minilm-l6-v2":       # live models are not "wanted"; coming-soon ones are listed
        assert page.locator("ol.wanted").get_by_role("link").first.get_attribute("href") == f"/models/{slug}"


def test_model_page_try_it_and_compare(page, live: LiveServer) -> None:
    sign_up_in_browser(page, new_email("tryit"))
    page.goto("/models/all-minilm-l6-v2")
    assert page.locator("h1").inner_text() == "all-MiniLM-L6-v2"
    assert page.locator(".crumbs").inner_text().endswith("embeddings · live")
    page.get_by_label("First text").fill("A man is eating food.")
    page.get_by_label("Second text").fill("A man is eating a piece of bread.")
    page.get_by_label("Embed as").select_option("document-document")
    page.get_by_role("button", name="Compare the texts").click()
    result = page.locator("#try-output strong")
    result.wait_for()
    assert 0.5 < float(result.inner_text()) <= 1.0
    assert page.url.endswith("/models/all-minilm-l6-v2")      # in place, by fetch: no navigation
    page.get_by_label("First text").fill("how much protein should a female eat")
    page.get_by_label("Second text").fill("As a general guideline, the CDC recommends 46 grams of protein a day.")
    page.get_by_label("Embed as").select_option("query-document")
    page.get_by_role("button", name="Compare the texts").click()
    expect(page.locator("#try-output strong")).to_be_visible()
    expect(page.get_by_role("button", name="Compare the texts")).to_be_enabled()
    expect(page.locator("table.providers").get_by_role("rowheader", name="local")).to_be_visible()
    shoot(page, "model-live")

    seed = "linq-embed-mistral"
    page.goto(f"/models/{seed}")
    assert page.locator("h1").inner_text() == "Linq-Embed-Mistral"
    assert page.locator(".crumbs").inner_text().endswith("embeddings · coming soon")
    assert "opens when Linq-Embed-Mistral is live" in page.locator("#try").inner_text()
    shoot(page, "model")
    page.get_by_role("link", name="compare all →").click()
    assert page.url.endswith(f"/compare?models={seed},llm2vec-mistral-7b-instruct-v2,e5-mistral-7b-instruct,"
                             "sfr-embedding-mistral")
    table = page.locator("table.compare")
    for name in ("Linq-Embed-Mistral", "LLM2Vec Mistral 7B Instruct v2"):
        assert table.get_by_role("columnheader", name=name).is_visible()
    retrieval = table.get_by_role("row", name="Retrieval (15 datasets)")
    assert retrieval.get_by_role("cell").first.locator("strong").inner_text() == "60.2"   # the best score
    shoot(page, "compare")
    page.get_by_label("all-MiniLM-L6-v2").check()
    page.get_by_role("button", name="Compare", exact=True).click()
    assert table.get_by_role("columnheader", name="all-MiniLM-L6-v2").is_visible()
    page.goto("/models")
    shoot(page, "models")


def test_the_providers_table_stacks_at_phone_width(browser, tmp_path) -> None:
    """A healthy local provider and a down remote one: a table on a desktop, label/value cards on a phone."""
    settings = Settings(data_dir=tmp_path, providers=(EAST,), breaker_cooldown_s=60.0)
    with live_server(settings, loader=fake_loader(FakeEngine())) as base:
        context = browser.new_context(viewport=PHONE, base_url=base)
        try:
            page = context.new_page()
            problems: list[str] = []
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.goto("/models/all-minilm-l6-v2")
            table = page.locator("table.providers")
            rows = table.locator("tbody tr")
            expect(rows).to_have_count(2)
            east = rows.filter(has=page.get_by_role("rowheader", name="east"))
            expect(east.locator(".badge")).to_have_text("down")
            assert "not answering" in east.locator(".badge").get_attribute("title")
            expect(page.locator(".stats div", has_text="API providers").locator("dd")).to_have_text("1")
            widths = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
            assert widths[0] <= widths[1], f"the model page scrolls sideways at 390 px: {widths}"
            box = table.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
            assert east.evaluate("tr => getComputedStyle(tr).display") == "block"           # stacked
            label = east.locator("td").first.evaluate("td => getComputedStyle(td, '::before').content")
            assert label == '"State"'
            page.set_viewport_size(DESKTOP)
            assert east.evaluate("tr => getComputedStyle(tr).display") == "table-row"
            expect(table.locator("thead")).to_be_visible()
            assert not problems, problems
        finally:
            context.close()


def test_no_page_scrolls_sideways_at_phone_width_and_key_columns_show(browser, live: LiveServer) -> None:
    """Every page at 390 px, as a visitor and signed in with usage: no sideways scroll, no hidden column."""
    context = browser.new_context(viewport=PHONE, base_url=live.base_url)
    context.set_default_timeout(15_000)
    try:
        page = context.new_page()
        problems: list[str] = []
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        for path in [*CATALOG, "/models?status=coming%20soon", "/compare?models=all-minilm-l6-v2", "/signup",
                     "/signin"]:
            page.goto(path)
            assert not layout_problems(page), (path, layout_problems(page))
            assert page.locator("table.catalog, table.compare, table.bench, table.providers, form").count()
        rows = page.goto("/models") and page.locator("table.catalog tbody tr")
        assert rows.first.evaluate("tr => getComputedStyle(tr).display") == "grid"          # a card, not a row

        key = sign_up_in_browser(page, new_email("phone"))
        page.goto("/dashboard")
        expect(page.locator("#usage-days-empty")).to_be_visible()                          # the chart's empty state
        assert page.locator("svg#usage-days").count() == 0
        r = httpx.post(live.url("/v1/embeddings"), json={"model": "all-minilm-l6-v2", "input": ["hello"]},
                       headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert r.status_code == 200
        page.reload()
        assert not layout_problems(page), layout_problems(page)
        expect(page.locator("svg#usage-days-narrow")).to_be_visible()                     # the phone's drawing
        expect(page.locator("svg#usage-days")).to_be_hidden()
        assert page.locator("svg#usage-days-narrow rect").count() == 30
        expect(page.locator("table.keys tbody tr").first.locator("td[data-label=Key] code")).to_be_visible()
        page.set_viewport_size(DESKTOP)
        expect(page.locator("svg#usage-days")).to_be_visible()
        expect(page.locator("svg#usage-days-narrow")).to_be_hidden()
        assert not layout_problems(page), layout_problems(page)
        assert not problems, problems
    finally:
        context.close()


def test_a_coming_soon_page_on_a_phone_puts_the_call_to_action_first(browser, live: LiveServer) -> None:
    context = browser.new_context(viewport=PHONE, base_url=live.base_url)
    try:
        page = context.new_page()
        page.goto("/models/linq-embed-mistral")

        def top(selector: str) -> float:
            return page.locator(selector).bounding_box()["y"]

        assert top("#want") < top("#specs-h") < top("#try") < top("#faq-h")
        assert top("#want") < PHONE["height"] * 1.5, "the call to action is not near the top"
        expect(page.locator("#want")).to_contain_text("not yet live")
        expect(page.locator("#snippets-soon")).to_contain_text("these snippets work once it is")
        page.set_viewport_size(DESKTOP)          # a wide screen keeps it in the right-hand column
        want, specs = page.locator("#want").bounding_box(), page.locator("#specs-h").bounding_box()
        assert want["x"] > specs["x"] + specs["width"] and want["y"] < specs["y"] + 200
    finally:
        context.close()


def test_sign_up_from_a_model_page_gives_that_models_code_with_the_key(page, live: LiveServer) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live.base_url)
    page.goto("/models/linq-embed-mistral")
    page.get_by_role("link", name="Sign up for free credit").click()
    shown = sign_up_in_browser(page, new_email("from-model"), go=False)
    assert page.url.endswith("/signup/done?next=/models/linq-embed-mistral")    # a GET after the POST
    expect(page.get_by_role("heading", name="Your first call to Linq-Embed-Mistral")).to_be_visible()
    curl = page.locator("#first-call").inner_text()
    assert f"Bearer {shown}" in curl and '"model": "linq-embed-mistral"' in curl
    assert f'api_key="{shown}"' in page.locator("#first-call-python").inner_text()
    page.get_by_role("button", name="Copy curl").click()
    assert page.evaluate("navigator.clipboard.readText()") == curl.strip()
    shoot(page, "signup-done")
    page.reload()                                                               # no second POST, no key
    expect(page.locator("#api-key")).to_have_count(0)
    expect(page.locator("#new-key")).to_contain_text("create another on your dashboard")
    page.get_by_role("link", name="Back to Linq-Embed-Mistral").click()
    assert page.url.endswith("/models/linq-embed-mistral")


CATALOG = ["/models", "/models/all-minilm-l6-v2", "/models/linq-embed-mistral", "/compare"]
PAGES = {"visitor": [*CATALOG, "/signin", "/signup"], "signed-in": [*CATALOG, "/dashboard"]}


@pytest.mark.parametrize("who", ["visitor", "signed-in"])
def test_keyboard_alone_reaches_every_control(page, live: LiveServer, who: str) -> None:
    if who == "signed-in":
        sign_up_in_browser(page, new_email("keyboard"))
    for path in PAGES[who]:
        page.goto(path)
        expected = page.evaluate(
            """(selector) => [...document.querySelectorAll(selector)]
                 .filter(el => el.getClientRects().length && getComputedStyle(el).visibility !== 'hidden'
                               && !el.closest('details:not([open]) > :not(summary)'))
                 .map(el => el.outerHTML.slice(0, 120))""", FOCUSABLE)
        reached: list[str] = []
        unstyled: list[str] = []
        for _ in range(len(expected) + 5):
            page.keyboard.press("Tab")
            info = page.evaluate(
                """() => { const el = document.activeElement; const s = getComputedStyle(el);
                           return [el.outerHTML.slice(0, 120), s.outlineStyle, s.outlineWidth]; }""")
            if info[0].startswith("<body"):
                break
            reached.append(info[0])
            if info[1] == "none" or info[2] in ("0px", ""):
                unstyled.append(info[0])
        missing = [e for e in expected if e not in reached]
        assert not missing, f"{path}: keyboard cannot reach {missing}"
        assert not unstyled, f"{path}: no visible focus ring on {unstyled}"
        assert reached[0].startswith('<a class="skip"'), f"{path}: the first stop is not the skip link"


def test_skip_link_moves_focus_to_the_content(page, live: LiveServer) -> None:
    page.goto("/models/all-minilm-l6-v2")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "content"
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.closest('main') !== null")
    assert focused, "after the skip link, Tab should continue inside the main content"


def _coming_soon_slug() -> str | None:
    from gigarouter.catalog.cards import load_cards

    others = sorted(slug for slug in load_cards() if slug != "all-minilm-l6-v2")
    return others[0] if others else None
