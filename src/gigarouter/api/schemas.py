"""The embeddings request: OpenAI's fields plus our extensions, validated with precise errors.

Validation is written out by hand rather than left to a pydantic union: the
four OpenAI ``input`` forms overlap (a list of ints vs a list of strings), and
a client deserves to be told *which* element is wrong, with ``param`` set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gigarouter.errors import InvalidRequest, shown
from gigarouter.pooling.encoding import CALIBRATED_TYPES, EMBEDDING_TYPES
from gigarouter.router.preferences import parse_preferences

ENCODING_FORMATS = ("float", "base64")
INPUT_TYPES = ("query", "document")
#: "chunk": embed an over-long input as overlapping windows and pool them (recipes/chunking.py)
TRUNCATE_MODES = ("end", "start", "none", "chunk")
KNOWN_FIELDS = {"input", "model", "encoding_format", "dimensions", "user", "input_type", "instruction",
                "truncate", "normalize", "provider", "cache", "embedding_type"}
#: Token ids and ``dimensions`` are 32-bit: no vocabulary or width comes near, and numpy, torch and
#: every upstream take them as int32/int64 without overflow.
MAX_INT = 2**31 - 1


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    texts: list[str] | None            # set when input is text
    token_ids: list[list[int]] | None  # set when input is token ids
    encoding_format: str = "float"
    dimensions: int | None = None
    user: str | None = None
    input_type: str = "document"
    instruction: str | None = None
    truncate: str = "end"
    normalize: bool = True
    provider: Any = None               # OpenRouter's provider preferences, checked by router.preferences
    cache: bool = True                 # false: neither read nor write the embedding cache (docs/cache.md)
    embedding_type: str = "float"      # float | int8 | uint8 | binary | ubinary (pooling/encoding.py)

    @property
    def count(self) -> int:
        return len(self.texts if self.texts is not None else self.token_ids or [])


def parse_embedding_request(body: Any, *, max_inputs: int) -> EmbeddingRequest:
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", param=None)
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        name = shown(unknown[0])
        raise InvalidRequest(f"Unrecognized request argument supplied: {name}", param=name)
    if "model" not in body:
        raise InvalidRequest("you must provide a model parameter", param="model")
    if "input" not in body:
        raise InvalidRequest("you must provide an input parameter", param="input")
    texts, token_ids = _parse_input(body["input"], max_inputs=max_inputs)
    # Checked here, before anything hashes or stores the body; the router parses it again with
    # the model name's :floor/:nitro suffix.
    parse_preferences(body.get("provider"))
    normalize = _bool(body, "normalize", True)
    embedding_type = _choice(body, "embedding_type", EMBEDDING_TYPES, "float")
    if embedding_type in CALIBRATED_TYPES and not normalize:
        raise InvalidRequest(f"embedding_type={embedding_type!r} is scaled for unit vectors: it needs "
                             "normalize=true", param="embedding_type")
    return EmbeddingRequest(
        model=_string(body, "model", required=True),
        texts=texts,
        token_ids=token_ids,
        encoding_format=_choice(body, "encoding_format", ENCODING_FORMATS, "float"),
        dimensions=_dimensions(body.get("dimensions")),
        user=_string(body, "user"),
        input_type=_choice(body, "input_type", INPUT_TYPES, "document"),
        instruction=_string(body, "instruction"),
        truncate=_choice(body, "truncate", TRUNCATE_MODES, "end"),
        normalize=normalize,
        provider=body.get("provider"),
        cache=_bool(body, "cache", True),
        embedding_type=embedding_type,
    )


def _parse_input(value: Any, *, max_inputs: int) -> tuple[list[str] | None, list[list[int]] | None]:
    if isinstance(value, str):
        _nonempty_text(value, "input")
        return [value], None
    if not isinstance(value, list):
        raise InvalidRequest("input must be a string, an array of strings, an array of token ids, "
                             "or an array of arrays of token ids", param="input")
    if not value:
        raise InvalidRequest("input must not be an empty array", param="input")
    if len(value) > max_inputs:
        raise InvalidRequest(f"input has {len(value)} items; at most {max_inputs} are allowed per request",
                             param="input")
    first = value[0]
    if isinstance(first, str):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise InvalidRequest(f"input[{i}] must be a string like the other items", param=f"input[{i}]")
            _nonempty_text(item, f"input[{i}]")
        return list(value), None
    if _is_token(first):
        _check_tokens(value, "input")
        return None, [list(value)]
    if isinstance(first, list):
        for i, item in enumerate(value):
            if not isinstance(item, list):
                raise InvalidRequest(f"input[{i}] must be an array of token ids like the other items",
                                     param=f"input[{i}]")
            if not item:
                raise InvalidRequest(f"input[{i}] must not be empty", param=f"input[{i}]")
            _check_tokens(item, f"input[{i}]")
        return None, list(value)      # the inner lists are this request's own, fresh from the parser
    raise InvalidRequest("input items must be strings, token ids (integers) or arrays of token ids",
                         param="input[0]")


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_tokens(values: list[Any], param: str) -> None:
    # The common case at C speed (a 5 MB body holds a million ids: a Python loop held the event loop for
    # ~1 s on a busy 2-core machine); the loop below only finds the first bad one for the message.
    if values and set(map(type, values)) == {int} and 0 <= min(values) and max(values) <= MAX_INT:
        return
    for j, token in enumerate(values):
        if not _is_token(token) or not 0 <= token <= MAX_INT:
            raise InvalidRequest(f"{param}[{j}] must be an integer token id from 0 to {MAX_INT}", param=param)


def _nonempty_text(text: str, param: str) -> None:
    if not text:
        raise InvalidRequest(f"{param} must not be an empty string", param=param)


def _string(body: dict, key: str, *, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise InvalidRequest(f"{key} must be a {'non-empty ' if required else ''}string", param=key)
    return value


def _choice(body: dict, key: str, choices: tuple[str, ...], default: str) -> str:
    value = body.get(key)
    if value is None:
        return default
    if value not in choices:
        got = repr(shown(value)) if isinstance(value, str) else shown(value)
        raise InvalidRequest(f"{key} must be one of {', '.join(repr(c) for c in choices)}; got {got}",
                             param=key)
    return value


def _bool(body: dict, key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidRequest(f"{key} must be true or false", param=key)
    return value


def _dimensions(value: Any) -> int | None:
    if value is None:
        return None
    if not _is_token(value) or not 1 <= value <= MAX_INT:
        raise InvalidRequest("dimensions must be a positive integer", param="dimensions")
    return value
