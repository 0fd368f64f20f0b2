"""cors_origins: a browser page on an allowed origin may call the API (issue 15, part 2)."""

from __future__ import annotations

import pytest

from gigarouter.settings import ConfigError, Settings, load_settings

APP = "https://app.example.com"
PREFLIGHT = {"Origin": APP, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type, x-stainless-lang"}


def test_preflight_and_the_request_itself(fake_client_factory):
    client = fake_client_factory(cors_origins=(APP,))
    r = client.options("/v1/embeddings", headers=PREFLIGHT)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == APP
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in r.headers

    r = client.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "x"}, headers={"Origin": APP})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == APP
    exposed = r.headers["access-control-expose-headers"]
    assert "x-request-id" in exposed and "x-ratelimit-remaining-requests" in exposed
    # Errors are readable by the page too.
    r = client.post("/v1/embeddings", json={"model": "nope", "input": "x"}, headers={"Origin": APP})
    assert r.status_code == 404 and r.headers["access-control-allow-origin"] == APP


def test_other_origins_and_the_web_pages_get_no_cors(fake_client_factory):
    client = fake_client_factory(cors_origins=(APP,))
    r = client.options("/v1/embeddings", headers={**PREFLIGHT, "Origin": "https://evil.example"})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    r = client.get("/models", headers={"Origin": APP})
    assert "access-control-allow-origin" not in r.headers


def test_off_by_default(fake_client_factory):
    client = fake_client_factory()
    r = client.options("/v1/embeddings", headers=PREFLIGHT)
    assert r.status_code == 405 and "access-control-allow-origin" not in r.headers


def test_any_origin(fake_client_factory):
    client = fake_client_factory(cors_origins=("*",))
    r = client.options("/v1/models", headers={**PREFLIGHT, "Origin": "http://localhost:5173",
                                               "Access-Control-Request-Method": "GET"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"


def test_the_setting_is_checked(tmp_path):
    config = tmp_path / "g.toml"
    config.write_text('cors_origins = ["https://a.example", "http://localhost:3000"]\n')
    assert load_settings(config).cors_origins == ("https://a.example", "http://localhost:3000")
    for bad in (("https://a.example/",), ("a.example",), "https://a.example"):
        with pytest.raises(ConfigError, match="cors_origins"):
            Settings(cors_origins=bad)
