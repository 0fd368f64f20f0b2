"""x-ratelimit-* headers on every keyed embeddings response, as docs/accounts.md says (issue 15, part 2)."""

from __future__ import annotations

import pytest

from gigarouter.settings import ConfigError, Settings

BODY = {"model": "all-minilm-l6-v2", "input": ["one", "two"]}


def keyed(fake_client_factory, **settings):
    client = fake_client_factory(auth="required", **settings)
    key = client.post("/v1/accounts", json={}).json()["api_key"]["key"]
    return client, {"Authorization": f"Bearer {key}"}


def test_a_key_without_limits_of_its_own_gets_the_default_limits_and_their_headers(fake_client_factory):
    client, auth = keyed(fake_client_factory)
    r = client.post("/v1/embeddings", json=BODY, headers=auth)
    assert r.status_code == 200, r.text
    assert r.headers["x-ratelimit-limit-requests"] == "10000"
    # The buckets refill continuously (167 requests a second here), so the one request taken may be back.
    assert 9999 <= int(r.headers["x-ratelimit-remaining-requests"]) <= 10_000
    assert r.headers["x-ratelimit-limit-tokens"] == "10000000"
    assert int(r.headers["x-ratelimit-remaining-tokens"]) < 10_000_000
    assert r.headers["x-ratelimit-reset-requests"].endswith("ms")
    assert r.headers["x-ratelimit-reset-tokens"]


def test_the_default_limit_is_a_setting(fake_client_factory):
    client, auth = keyed(fake_client_factory, default_rpm=2)
    for _ in range(2):     # 2 a minute: nothing measurable refills between these
        r = client.post("/v1/embeddings", json=BODY, headers=auth)
        assert r.status_code == 200 and r.headers["x-ratelimit-limit-requests"] == "2"
    r = client.post("/v1/embeddings", json=BODY, headers=auth)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    assert r.headers["x-ratelimit-limit-requests"] == "2" and int(r.headers["retry-after"]) >= 1


def test_zero_means_unlimited_and_no_headers(fake_client_factory):
    client, auth = keyed(fake_client_factory, default_rpm=0, default_tpm=0)
    r = client.post("/v1/embeddings", json=BODY, headers=auth)
    assert r.status_code == 200 and not any(h.startswith("x-ratelimit-") for h in r.headers)


def test_the_settings_are_checked():
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="default_rpm"):
            Settings(default_rpm=bad)
