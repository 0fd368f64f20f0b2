"""The web pages over real HTTP (no JS): catalog, compare, try-it, sign-up/in/out, votes, keys, CSRF."""

from __future__ import annotations

import re

import httpx

from tests.web.conftest import PASSWORD, LiveServer, csrf_of, new_email, sign_up


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


# -- catalog ---------------------------------------------------------------------------------------

def test_models_page_lists_the_catalog_with_filters(client: httpx.Client) -> None:
    page = client.get("/models")
    assert page.status_code == 200
    assert "all-MiniLM-L6-v2" in page.text and 'href="/models/all-minilm-l6-v2"' in page.text
    for label in ("Status", "License", "Task", "Sort by"):
        assert f">{label}</label>" in page.text
    live_only = client.get("/models", params={"status": "live"}).text
    assert "all-MiniLM-L6-v2" in live_only
    soon_only = client.get("/models", params={"status": "coming soon"}).text
    assert 'href="/models/all-minilm-l6-v2"' not in soon_only
    assert 'href="/models/all-minilm-l6-v2"' not in client.get("/models", params={"license": "no-such"}).text
    assert client.get("/models", params={"sort": "price", "status": "bogus"}).status_code == 200


def test_model_page_shows_live_status_snippets_and_try_box(client: httpx.Client) -> None:
    page = client.get("/models/all-minilm-l6-v2")
    assert page.status_code == 200
    text = text_of(page.text)
    assert "embeddings · live" in text
    assert "API providers 1" in text
    assert "sentence-transformers/all-MiniLM-L6-v2" in text
    assert "published Aug 2021 · updated Jan 2024" in text
    assert '"model": "all-minilm-l6-v2"' in page.text.replace("&#34;", '"')
    assert "extra_body=" in page.text and "client.embeddings.create(" in page.text
    assert 'id="try-a"' not in page.text    # accounts are on: try-it needs a session
    assert "to try it" in text


def test_unknown_model_is_an_html_404_and_aliases_redirect(client: httpx.Client) -> None:
    missing = client.get("/models/no-such-model")
    assert missing.status_code == 404 and "text/html" in missing.headers["content-type"]
    alias = client.get("/models/all-MiniLM-L6-v2")
    assert alias.status_code == 308 and alias.headers["location"] == "/models/all-minilm-l6-v2"
    hub = client.get("/models/sentence-transformers/all-MiniLM-L6-v2")
    assert hub.status_code == 308 and hub.headers["location"] == "/models/all-minilm-l6-v2"
    assert client.get("/models/nobody/nothing").status_code == 404


def test_compare_page_puts_models_side_by_side(client: httpx.Client) -> None:
    page = client.get("/compare", params={"models": "all-minilm-l6-v2,not-a-model"})
    assert page.status_code == 200
    text = text_of(page.text)
    assert "Not in the catalog: not-a-model" in text
    for row in ("Price / 1M tokens", "License", "Parameters", "Max tokens", "Dimensions"):
        assert row in text
    assert "Apache-2.0" in text and "22.7M" in text
    assert client.get("/compare").status_code == 200


def test_pages_send_security_headers_and_no_store(client: httpx.Client) -> None:
    page = client.get("/models")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    cookie = page.headers["set-cookie"]
    assert "gr_csrf=" in cookie and "HttpOnly" in cookie and "samesite=lax" in cookie.lower()


def test_static_files_are_served_from_the_package(client: httpx.Client) -> None:
    page = client.get("/models").text
    css = re.search(r'href="(/static/site\.css\?v=[0-9a-f]+)"', page).group(1)
    js = re.search(r'src="(/static/site\.js\?v=[0-9a-f]+)"', page).group(1)
    assert client.get(css).status_code == 200 and client.get(js).status_code == 200


# -- sign-up, sign-in, sessions ---------------------------------------------------------------------

def test_sign_up_shows_the_key_once_and_it_works_on_the_api(client: httpx.Client, live: LiveServer) -> None:
    email, key = sign_up(client)
    assert client.cookies.get("gr_session")
    dashboard = client.get("/dashboard")
    assert dashboard.status_code == 200 and email in dashboard.text
    assert key not in dashboard.text                       # shown once, never again
    assert "$1.00" in text_of(dashboard.text)              # the free credit
    r = httpx.post(live.url("/v1/embeddings"), json={"model": "all-minilm-l6-v2", "input": ["hello world"]},
                   headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    after = text_of(client.get("/dashboard").text)
    assert "$0.99999" in after                             # 4 tokens at $0.002 / 1M, rounded up to 1 micro-dollar
    assert "all-minilm-l6-v2" in after


def test_the_dashboard_shows_tokens_answered_from_the_cache(client: httpx.Client, live: LiveServer) -> None:
    _, key = sign_up(client)
    for _ in range(2):   # the second time, all 5 tokens come from this account's cache entries
        r = httpx.post(live.url("/v1/embeddings"), json={"model": "all-minilm-l6-v2", "input": ["cached twice"]},
                       headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
    assert r.headers["x-gigarouter-cache"] == "hit"
    page = client.get("/dashboard").text
    assert "5 from the cache" in text_of(page)
    models = text_of(re.search(r'<table class="usage-models[^"]*">.*?</table>', page, re.S).group(0))
    assert "Cached tokens" in models and "all-minilm-l6-v2 2 10 5 $" in models


def test_sign_up_refuses_bad_input_and_a_second_account_for_one_email(client: httpx.Client) -> None:
    token = csrf_of(client.get("/signup").text)
    bad = client.post("/signup", data={"email": "not-an-email", "password": "short", "csrf_token": token})
    assert bad.status_code == 400
    assert "Enter an email address" in bad.text and "at least 10 characters" in bad.text
    email, _ = sign_up(client)
    with httpx.Client(base_url=str(client.base_url)) as other:
        token = csrf_of(other.get("/signup").text)
        again = other.post("/signup", data={"email": email.upper(), "password": PASSWORD, "csrf_token": token})
    assert again.status_code == 400 and "exists already" in again.text


def test_sign_in_sign_out_and_wrong_password(client: httpx.Client, live: LiveServer) -> None:
    email, _ = sign_up(client)
    first_session = client.cookies.get("gr_session")
    token = csrf_of(client.get("/models").text)
    out = client.post("/signout", data={"csrf_token": token})
    assert out.status_code == 303 and out.headers["location"] == "/models?done=signed-out"
    assert client.get("/dashboard").headers["location"] == "/signin?next=/dashboard"
    # The old session token is dead even if someone kept it.
    with httpx.Client(base_url=live.base_url, cookies={"gr_session": first_session}) as stale:
        assert stale.get("/dashboard").status_code == 303

    token = csrf_of(client.get("/signin").text)
    wrong = client.post("/signin", data={"email": email, "password": "not the password", "csrf_token": token})
    assert wrong.status_code == 400 and "do not match" in wrong.text
    ok = client.post("/signin", data={"email": email, "password": PASSWORD, "csrf_token": token,
                                      "next": "/models/all-minilm-l6-v2"})
    assert ok.status_code == 303 and ok.headers["location"] == "/models/all-minilm-l6-v2"
    assert client.cookies.get("gr_session") not in (None, first_session)


def test_sign_in_never_redirects_off_site(client: httpx.Client) -> None:
    email, _ = sign_up(client)
    client.post("/signout", data={"csrf_token": csrf_of(client.get("/models").text)})
    token = csrf_of(client.get("/signin").text)
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        r = client.post("/signin", data={"email": email, "password": PASSWORD, "csrf_token": token, "next": target})
        assert r.headers["location"] == "/dashboard"
        token = csrf_of(client.get("/models").text)
        client.post("/signout", data={"csrf_token": token})
        token = csrf_of(client.get("/signin").text)


# -- CSRF ------------------------------------------------------------------------------------------

def test_forms_without_the_csrf_token_are_refused(client: httpx.Client, live: LiveServer) -> None:
    client.get("/signup")
    missing = client.post("/signup", data={"email": new_email(), "password": PASSWORD})
    assert missing.status_code == 403 and "text/html" in missing.headers["content-type"]
    forged = client.post("/signup", data={"email": new_email(), "password": PASSWORD, "csrf_token": "0" * 64})
    assert forged.status_code == 403
    # A token from another browser does not fit this browser's cookie.
    with httpx.Client(base_url=live.base_url) as other:
        foreign = csrf_of(other.get("/signup").text)
    assert client.post("/signup", data={"email": new_email(), "password": PASSWORD,
                                        "csrf_token": foreign}).status_code == 403
    token = csrf_of(client.get("/signup").text)
    cross = client.post("/signup", data={"email": new_email(), "password": PASSWORD, "csrf_token": token},
                        headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403


# -- votes -----------------------------------------------------------------------------------------

def test_a_user_votes_once_per_model(client: httpx.Client, live: LiveServer) -> None:
    page_of = "/models/linq-embed-mistral"          # coming soon here: live pages ask for no votes
    anonymous = client.get(page_of).text
    assert "Sign in to vote" in anonymous
    sign_up(client)
    before = int(re.search(r'id="vote-count">(\d+)<', client.get(page_of).text).group(1))
    token = csrf_of(client.get(page_of).text)
    for _ in range(2):   # the second vote is not counted
        r = client.post(f"{page_of}/vote", data={"action": "vote", "csrf_token": token})
        assert r.status_code == 303
    page = client.get(page_of).text
    assert int(re.search(r'id="vote-count">(\d+)<', page).group(1)) == before + 1
    assert "Withdraw my vote" in page
    r = client.post(f"{page_of}/vote", data={"action": "unvote", "csrf_token": token})
    page = client.get(page_of).text
    assert int(re.search(r'id="vote-count">(\d+)<', page).group(1)) == before


def test_a_live_page_asks_for_no_votes_and_shows_the_price_it_charges(client: httpx.Client) -> None:
    page = client.get("/models/all-minilm-l6-v2").text
    assert "live now" in page
    for ask in ("We want it", "Sign in to vote", 'id="vote-count"', "tell us you want it"):
        assert ask not in page
    price = re.search(r'<dd id="price">(.*?)</dd>', page, re.S).group(1)
    assert "$0.002" in price and "~" not in price and "estimated" not in price
    assert "est. price" not in page


def test_voting_signed_out_sends_you_to_sign_in(client: httpx.Client) -> None:
    token = csrf_of(client.get("/signin").text)
    r = client.post("/models/all-minilm-l6-v2/vote", data={"action": "vote", "csrf_token": token})
    assert r.status_code == 303 and r.headers["location"].startswith("/signin?next=/models/all-minilm-l6-v2")


# -- keys ------------------------------------------------------------------------------------------

def test_create_and_revoke_keys_from_the_dashboard(client: httpx.Client, live: LiveServer) -> None:
    sign_up(client)
    token = csrf_of(client.get("/dashboard").text)
    posted = client.post("/dashboard/keys", data={"name": "ci", "csrf_token": token})
    assert posted.status_code == 303 and posted.headers["location"] == "/dashboard#new-key"
    created = client.get("/dashboard")       # shows the new key once
    assert created.status_code == 200
    key = re.search(r'<code id="api-key">(gr-[^<]+)</code>', created.text).group(1)
    body = {"model": "all-minilm-l6-v2", "input": "hi"}
    auth = {"Authorization": f"Bearer {key}"}
    assert httpx.post(live.url("/v1/embeddings"), json=body, headers=auth).status_code == 200
    key_id = re.search(r'action="/dashboard/keys/(key_[0-9a-f]+)/revoke"[^>]*>\s*<input[^>]*>\s*<button[^>]*'
                       r'aria-label="Revoke key ci"', created.text)
    assert key_id, "no revoke form for the new key"
    revoked = client.post(f"/dashboard/keys/{key_id.group(1)}/revoke", data={"csrf_token": token})
    assert revoked.status_code == 303
    assert httpx.post(live.url("/v1/embeddings"), json=body, headers=auth).status_code == 401
    assert "revoked" in client.get("/dashboard").text


def test_nobody_revokes_another_accounts_key(client: httpx.Client, live: LiveServer) -> None:
    sign_up(client)
    victim_keys = re.findall(r'/dashboard/keys/(key_[0-9a-f]+)/revoke', client.get("/dashboard").text)
    with httpx.Client(base_url=live.base_url) as attacker:
        sign_up(attacker)
        token = csrf_of(attacker.get("/dashboard").text)
        r = attacker.post(f"/dashboard/keys/{victim_keys[0]}/revoke", data={"csrf_token": token})
        assert r.status_code == 404
    assert "badge live\">active" in client.get("/dashboard").text


def test_a_new_key_is_shown_once_and_a_reload_does_not_post_again(client: httpx.Client) -> None:
    sign_up(client)
    token = csrf_of(client.get("/dashboard").text)
    client.post("/dashboard/keys", data={"name": "once", "csrf_token": token})
    first = client.get("/dashboard").text
    assert re.search(r'<code id="api-key">gr-', first)
    again = client.get("/dashboard").text                   # the reload: a GET, no second key
    assert 'id="api-key"' not in again
    assert again.count('aria-label="Revoke key once"') == 1


def test_sign_up_from_a_model_page_shows_that_models_code_with_the_key_in_it(client: httpx.Client) -> None:
    page = client.get("/models/linq-embed-mistral").text
    assert 'href="/signup?next=/models/linq-embed-mistral"' in page
    form = client.get("/signup", params={"next": "/models/linq-embed-mistral"}).text
    assert 'name="next" value="/models/linq-embed-mistral"' in form and "call Linq-Embed-Mistral" in form
    posted = client.post("/signup", data={"email": new_email(), "password": PASSWORD, "csrf_token": csrf_of(form),
                                          "next": "/models/linq-embed-mistral"})
    assert posted.status_code == 303 and posted.headers["location"] == "/signup/done?next=/models/linq-embed-mistral"
    done = client.get(posted.headers["location"])
    key = re.search(r'<code id="api-key">(gr-[^<]+)</code>', done.text).group(1)
    text = done.text.replace("&#34;", '"')
    assert f'Authorization: Bearer {key}' in text and f'api_key="{key}"' in text       # the key in both snippets
    assert '"model": "linq-embed-mistral"' in text and "Your first call to Linq-Embed-Mistral" in text
    assert "this code works once it is" in text_of(done.text)                         # coming soon here
    assert 'data-copy="first-call"' in done.text and 'data-copy="api-key"' in done.text
    reloaded = client.get(posted.headers["location"]).text                              # shown once
    assert key not in reloaded and "create another on your dashboard" in text_of(reloaded)
    assert "$GIGAROUTER_API_KEY" in reloaded and "Your first call to Linq-Embed-Mistral" in reloaded
    assert client.get("/signup/done", params={"next": "https://evil.example/"}).status_code == 200
    assert "evil.example" not in client.get("/signup/done", params={"next": "https://evil.example/"}).text


# -- try it ----------------------------------------------------------------------------------------

def test_try_it_returns_a_cosine_similarity_for_signed_in_users(client: httpx.Client) -> None:
    token = csrf_of(client.get("/signin").text)
    body = {"a": "A man is eating food.", "b": "A man is eating a piece of bread.", "mode": "document-document"}
    headers = {"X-CSRF-Token": token, "Accept": "application/json"}
    assert client.post("/models/all-minilm-l6-v2/try", json=body, headers=headers).status_code == 401
    sign_up(client)
    headers["X-CSRF-Token"] = csrf_of(client.get("/models/all-minilm-l6-v2").text)
    r = client.post("/models/all-minilm-l6-v2/try", json=body, headers=headers)
    assert r.status_code == 200, r.text
    close = r.json()["similarity"]
    far = client.post("/models/all-minilm-l6-v2/try", headers=headers,
                      json={**body, "b": "The stock market fell sharply on Tuesday."}).json()["similarity"]
    assert 0.5 < close <= 1.0 and far < close
    too_long = client.post("/models/all-minilm-l6-v2/try", headers=headers, json={**body, "a": "x" * 5000})
    assert too_long.status_code == 400
    form = client.post("/models/all-minilm-l6-v2/try", data={**body, "csrf_token": headers["X-CSRF-Token"]})
    assert form.status_code == 200 and "Cosine similarity" in form.text
