"""The caller's provider preferences: OpenRouter's ``provider`` object and model-name suffixes.

Field names and shapes are OpenRouter's, so a client written for it works
unchanged (openai-python: ``extra_body={"provider": {...}}``):

- ``order``: provider names to try first, in this order;
- ``only`` / ``ignore``: allow only these / never these;
- ``allow_fallbacks`` (default true): false means only the providers in ``order``
  (or, without ``order``, only the first choice) are tried;
- ``sort``: ``price`` | ``latency`` | ``throughput`` for the providers not ordered;
- ``max_price``: ``{"prompt": USD per million tokens}``; providers above it are skipped.

OpenRouter's other fields (``require_parameters``, ``data_collection``, ``zdr``,
``quantizations``) are accepted with their types checked and do not change the
choice here (every provider we route to returns vectors only). The suffixes
``:floor`` (cheapest) and ``:nitro`` (fastest) on the model name set ``sort``
unless the body sets it. Anything else is a 400 naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gigarouter.errors import InvalidRequest, shown

SORTS = ("price", "latency", "throughput")
SUFFIX_SORTS = {"floor": "price", "nitro": "throughput"}
_ACCEPTED_IGNORED = {"require_parameters": bool, "zdr": bool, "data_collection": str, "quantizations": list}


@dataclass(frozen=True)
class Preferences:
    order: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()
    allow_fallbacks: bool = True
    sort: str | None = None
    max_price: float | None = None          # USD per million prompt tokens

    def names(self) -> list[tuple[str, str]]:
        """Every provider name the caller wrote, with the field it came from."""
        fields = (("order", self.order), ("only", self.only or ()), ("ignore", self.ignore))
        return [(f"provider.{field}", name) for field, names in fields for name in names]


def split_model_suffix(model: str) -> tuple[str, str | None]:
    """``"m:floor"`` -> ``("m", "price")``; a name without a known suffix is left whole."""
    base, sep, suffix = model.rpartition(":")
    if sep and base and suffix in SUFFIX_SORTS:
        return base, SUFFIX_SORTS[suffix]
    return model, None


def parse_preferences(value: Any, *, suffix_sort: str | None = None) -> Preferences:
    if value is None:
        return Preferences(sort=suffix_sort)
    if not isinstance(value, dict):
        raise InvalidRequest("provider must be an object (OpenRouter's provider preferences)", param="provider")
    known = {"order", "only", "ignore", "allow_fallbacks", "sort", "max_price", *_ACCEPTED_IGNORED}
    for key in value:
        if key not in known:
            raise InvalidRequest(f"provider.{shown(key)} is not a provider preference; known: "
                                 f"{', '.join(sorted(known))}", param=f"provider.{shown(key)}")
    for key, kind in _ACCEPTED_IGNORED.items():
        if value.get(key) is not None and not isinstance(value[key], kind):
            raise InvalidRequest(f"provider.{key} must be a {kind.__name__}", param=f"provider.{key}")
    if value.get("quantizations") is not None and not all(isinstance(q, str) for q in value["quantizations"]):
        raise InvalidRequest("provider.quantizations must be an array of strings", param="provider.quantizations")
    only = _names(value, "only")
    return Preferences(
        order=tuple(_names(value, "order") or ()),
        only=tuple(only) if only is not None else None,
        ignore=tuple(_names(value, "ignore") or ()),
        allow_fallbacks=_flag(value, "allow_fallbacks"),
        sort=_sort(value.get("sort"), suffix_sort),
        max_price=_max_price(value.get("max_price")),
    )


def _names(value: dict, key: str) -> list[str] | None:
    names = value.get(key)
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise InvalidRequest(f"provider.{key} must be an array of provider names", param=f"provider.{key}")
    return names


def _flag(value: dict, key: str) -> bool:
    flag = value.get(key)
    if flag is None:
        return True
    if not isinstance(flag, bool):
        raise InvalidRequest(f"provider.{key} must be true or false", param=f"provider.{key}")
    return flag


def _sort(sort: Any, suffix_sort: str | None) -> str | None:
    if sort is None:
        return suffix_sort
    if sort not in SORTS:
        raise InvalidRequest(f"provider.sort must be one of {', '.join(SORTS)}", param="provider.sort")
    return sort


def _max_price(value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest('provider.max_price must be an object such as {"prompt": 0.01} (USD per million '
                             "tokens)", param="provider.max_price")
    for key, price in value.items():
        if not isinstance(price, int | float) or isinstance(price, bool) or not 0 <= price < float("inf"):
            raise InvalidRequest(f"provider.max_price.{shown(key)} must be a number >= 0",
                                 param=f"provider.max_price.{shown(key)}")
    prompt = value.get("prompt")
    return float(prompt) if prompt is not None else None
