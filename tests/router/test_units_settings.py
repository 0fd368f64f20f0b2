"""``[[providers]]`` in the TOML config (tests/test_settings.py style)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gigarouter.settings import ConfigError, ProviderConfig, load_settings

MODEL = '[[models]]\nname = "mini"\nrecipe = "sbert"\nweights = "w"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gigarouter.toml"
    path.write_text(text)
    return path


def provider(name: str = "acme", extra: str = "", models: str = '["e5-large"]') -> str:
    return f'[[providers]]\nname = "{name}"\nbase_url = "https://api.example.com/v1"\nmodels = {models}\n{extra}'


def test_a_config_with_only_providers_serves_no_local_model(tmp_path):
    settings = load_settings(write(tmp_path, provider()))
    assert settings.models == ()
    (acme,) = settings.providers
    assert acme == ProviderConfig(name="acme", base_url="https://api.example.com/v1",
                                  models=(("e5-large", "e5-large"),))
    assert acme.timeout_s == 30.0 and acme.api_key_env is None and acme.price_per_million_usd is None


def test_providers_next_to_local_models(tmp_path):
    settings = load_settings(write(tmp_path, MODEL + provider()))
    assert [m.name for m in settings.models] == ["mini"]
    assert [p.name for p in settings.providers] == ["acme"]


def test_models_as_a_list_keep_the_name_on_both_sides(tmp_path):
    (acme,) = load_settings(write(tmp_path, provider(models='["a", "org/b"]'))).providers
    assert acme.models == (("a", "a"), ("org/b", "org/b"))
    assert acme.model_names == {"a": "a", "org/b": "org/b"}


def test_models_as_a_table_map_our_name_to_theirs(tmp_path):
    text = provider(models='{ "e5-large" = "intfloat/multilingual-e5-large", mini = "all-MiniLM-L6-v2" }',
                    extra='api_key_env = "ACME_KEY"\nprice_per_million_usd = 0.02\ntimeout_s = 5\n')
    (acme,) = load_settings(write(tmp_path, text)).providers
    assert acme.model_names == {"e5-large": "intfloat/multilingual-e5-large", "mini": "all-MiniLM-L6-v2"}
    assert acme.api_key_env == "ACME_KEY" and acme.price_per_million_usd == 0.02 and acme.timeout_s == 5


def test_models_as_a_sub_table(tmp_path):
    text = ('[[providers]]\nname = "acme"\nbase_url = "http://10.0.0.2:8000/v1"\n'
            '[providers.models]\n"e5-large" = "e5"\n')
    (acme,) = load_settings(write(tmp_path, text)).providers
    assert acme.model_names == {"e5-large": "e5"}


def test_a_local_model_may_take_another_provider_name(tmp_path):
    text = MODEL + 'provider = "gpu-box"\n' + provider(name="local")
    settings = load_settings(write(tmp_path, text))
    assert settings.models[0].provider == "gpu-box" and settings.providers[0].name == "local"


@pytest.mark.parametrize(("text", "message"), [
    (provider(extra='colour = "red"\n'), r"unknown key\(s\) in \[\[providers\]\]: colour"),
    (provider(models='[]'), "models must name at least one model"),
    (provider(models='"e5-large"'), "models must be a list of names or a table"),
    (provider(models='[1, 2]'), "models must be a list of names or a table"),
    (provider(models='{ a = 1 }'), "models must be a list of names or a table"),
    ('[[providers]]\nname = "acme"\nbase_url = "https://x"\n', "models must be a list"),
    ('[[providers]]\nname = "acme"\nmodels = ["m"]\n', r"\[\[providers\]\] entry"),
    (provider().replace("https://api.example.com/v1", "api.example.com/v1"), "base_url must start with http"),
    (provider().replace("https://api.example.com/v1", "ftp://api.example.com"), "base_url must start with http"),
    (provider().replace('"https://api.example.com/v1"', "8080"), "base_url must start with http"),
    (provider(extra="price_per_million_usd = -0.01\n"), "price_per_million_usd must be >= 0"),
    (provider(extra="price_per_million_usd = nan\n"), "price_per_million_usd must be >= 0"),
    (provider(extra='price_per_million_usd = "free"\n'), r"\[\[providers\]\] entry"),
    (provider(extra="timeout_s = 0\n"), "timeout_s must be > 0"),
    (provider(name="acme corp"), "name must be letters"),
    (provider(name=""), "name must be letters"),
    (provider(name="a/b"), "name must be letters"),
    (provider() + provider(models='["other"]'), "provider name 'acme' is used twice"),
    (provider(name="Acme") + provider(name="acme"), "used twice"),
    (MODEL + provider(name="local"), "provider name 'local' names both a \\[\\[providers\\]\\] entry and a local"),
    (MODEL + 'provider = "gpu"\n' + provider(name="gpu"), "names both"),
    (MODEL + 'provider = "GPU"\n' + provider(name="gpu"), "names both"),
    ('providers = "acme"\n', r"\[\[providers\]\] must be a list of tables"),
    ('providers = ["acme"]\n', r"\[\[providers\]\] must be a list of tables"),
])
def test_a_bad_provider_is_a_clear_error(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(write(tmp_path, text))


def test_a_provider_config_built_in_code_is_checked_too():
    with pytest.raises(ConfigError, match="models must name at least one model"):
        ProviderConfig(name="acme", base_url="https://x", models=())
    assert ProviderConfig.from_dict({"name": "acme", "base_url": "https://x", "models": ["m"]}).models == (("m", "m"),)
