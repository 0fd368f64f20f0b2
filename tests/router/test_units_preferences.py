"""OpenRouter's ``provider`` object and model-name suffixes: what is accepted, and which field a 400 names."""

from __future__ import annotations

import pytest

from gigarouter.errors import InvalidRequest
from gigarouter.router.preferences import Preferences, parse_preferences, split_model_suffix


def test_absent_preferences_are_the_defaults():
    assert parse_preferences(None) == Preferences()
    assert parse_preferences({}) == Preferences()
    assert parse_preferences(None, suffix_sort="price").sort == "price"


def test_openrouter_fields_are_parsed():
    prefs = parse_preferences({
        "order": ["b", "a"], "only": ["a", "b", "c"], "ignore": ["d"], "allow_fallbacks": False,
        "sort": "latency", "max_price": {"prompt": 0.02, "completion": 1},
    })
    assert prefs == Preferences(order=("b", "a"), only=("a", "b", "c"), ignore=("d",), allow_fallbacks=False,
                                sort="latency", max_price=0.02)
    assert prefs.names() == [("provider.order", "b"), ("provider.order", "a"), ("provider.only", "a"),
                             ("provider.only", "b"), ("provider.only", "c"), ("provider.ignore", "d")]


def test_nulls_mean_the_defaults():
    prefs = parse_preferences({"order": None, "only": None, "ignore": None, "allow_fallbacks": None,
                               "sort": None, "max_price": None})
    assert prefs == Preferences()


def test_empty_only_is_kept_apart_from_absent_only():
    assert parse_preferences({"only": []}).only == ()
    assert parse_preferences({}).only is None


def test_integer_max_price_and_zero_are_accepted():
    assert parse_preferences({"max_price": {"prompt": 0}}).max_price == 0.0
    assert parse_preferences({"max_price": {"prompt": 3}}).max_price == 3.0
    assert parse_preferences({"max_price": {"completion": 1.5}}).max_price is None


def test_openrouter_fields_without_effect_here_are_accepted():
    prefs = parse_preferences({"require_parameters": True, "data_collection": "deny", "zdr": False,
                               "quantizations": ["fp16", "bf16"]})
    assert prefs == Preferences()


@pytest.mark.parametrize("body", [{}, {"order": ["a"]}, {"sort": None}])
def test_suffix_sort_applies_when_the_body_has_no_sort(body):
    assert parse_preferences(body, suffix_sort="throughput").sort == "throughput"


def test_the_bodys_sort_wins_over_the_suffix():
    assert parse_preferences({"sort": "latency"}, suffix_sort="price").sort == "latency"


@pytest.mark.parametrize(("value", "param"), [
    ("price", "provider"),
    (["price"], "provider"),
    ({"bogus": 1}, "provider.bogus"),
    ({"order": "a"}, "provider.order"),
    ({"order": ["a", 1]}, "provider.order"),
    ({"order": ["a", ""]}, "provider.order"),
    ({"only": "a"}, "provider.only"),
    ({"only": [None]}, "provider.only"),
    ({"ignore": {"a": 1}}, "provider.ignore"),
    ({"allow_fallbacks": "false"}, "provider.allow_fallbacks"),
    ({"allow_fallbacks": 0}, "provider.allow_fallbacks"),
    ({"sort": "cheapest"}, "provider.sort"),
    ({"sort": ["price"]}, "provider.sort"),
    ({"sort": 1}, "provider.sort"),
    ({"max_price": 0.01}, "provider.max_price"),
    ({"max_price": [0.01]}, "provider.max_price"),
    ({"max_price": {"prompt": -0.01}}, "provider.max_price.prompt"),
    ({"max_price": {"prompt": "0.01"}}, "provider.max_price.prompt"),
    ({"max_price": {"prompt": True}}, "provider.max_price.prompt"),
    ({"max_price": {"prompt": float("inf")}}, "provider.max_price.prompt"),
    ({"max_price": {"prompt": float("nan")}}, "provider.max_price.prompt"),
    ({"max_price": {"prompt": 1, "completion": -1}}, "provider.max_price.completion"),
    ({"require_parameters": "yes"}, "provider.require_parameters"),
    ({"data_collection": False}, "provider.data_collection"),
    ({"zdr": 1}, "provider.zdr"),
    ({"quantizations": "fp16"}, "provider.quantizations"),
])
def test_a_bad_value_is_a_400_naming_its_field(value, param):
    with pytest.raises(InvalidRequest) as info:
        parse_preferences(value)
    assert info.value.param == param
    assert info.value.status == 400
    assert param in info.value.message


@pytest.mark.parametrize(("model", "expected"), [
    ("m:floor", ("m", "price")),
    ("m:nitro", ("m", "throughput")),
    ("org/model:floor", ("org/model", "price")),
    ("org/model:v1:nitro", ("org/model:v1", "throughput")),
    ("org/model:v1", ("org/model:v1", None)),
    ("org/model", ("org/model", None)),
    ("m:free", ("m:free", None)),
    (":floor", (":floor", None)),
    ("m:", ("m:", None)),
    ("m:floor:v1", ("m:floor:v1", None)),
])
def test_split_model_suffix(model, expected):
    assert split_model_suffix(model) == expected
