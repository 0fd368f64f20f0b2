"""``/openapi.json`` as the service really behaves: its request bodies, its statuses, its error shape.

FastAPI's own schema knows only what handlers declare: ``/v1/embeddings`` reads
its body by hand (precise per-element errors), so it had no request body at
all, and every operation claimed a 422 that the service never sends (a
validation error is a 400 in OpenAI's shape). This module rewrites the schema
once, at first request:

- the embeddings body, field by field, ``provider`` included (``EMBEDDINGS_REQUEST``);
- for every operation, the statuses it can answer (``STATUSES``), each with the
  OpenAI error body; no 422;
- ``/metrics`` as ``text/plain``.

``tests/api/test_openapi.py`` checks that every operation is in ``STATUSES``
and runs schemathesis against the live app: no server errors, no status code
outside the schema.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from gigarouter.api.errors import COHERE_PATHS, TEI_PATHS
from gigarouter.api.schemas import ENCODING_FORMATS, INPUT_TYPES, MAX_INT, TRUNCATE_MODES
from gigarouter.pooling.encoding import EMBEDDING_TYPES
from gigarouter.router.preferences import SORTS
from gigarouter.settings import Settings

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}},
    }},
}

#: TEI's error body (its routes: api/routes/tei.py) and Cohere's (api/routes/cohere.py).
TEI_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error", "error_type"],
    "properties": {"error": {"type": "string"}, "error_type": {"type": "string"}},
}
COHERE_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["message"],
    "properties": {"id": {"type": ["string", "null"]}, "message": {"type": "string"}},
}

WHY = {
    400: "Invalid request: malformed or non-strict JSON, a wrong type or value (`param` names the field).",
    401: "Missing, malformed, unknown, revoked or expired API key.",
    402: "Not enough credit (`insufficient_quota`) or the key's spend cap is reached.",
    403: "The key lacks the scope, the account is disabled, or sign-up is off.",
    404: "Unknown model, key, account or route; or accounts are off on this server (`accounts_disabled`).",
    409: "An account with this email exists, or a request with this Idempotency-Key is still running.",
    413: "The body is larger than `max_body_bytes`.",
    429: "A rate limit (the key's, sign-up's per address), or the model's queue would make this request wait "
         "longer than `max_queue_wait_ms` (or its own deadline); see `Retry-After`.",
    503: "No provider can serve the model now, the model is loading, the device hangs, the request's deadline "
         "passed (its work was dropped and not charged), or the server is shutting down; see `Retry-After`.",
}

#: Statuses whose every answer carries Retry-After (seconds).
RETRY_AFTER = {"Retry-After": {"required": True, "description": "Whole seconds to wait before retrying.",
                               "schema": {"type": "integer", "minimum": 1}}}

#: The client's own deadline, in seconds (api/deadlines.py); never more than the server's `request_timeout_s`.
TIMEOUT_PARAMETERS = [
    {"name": name, "in": "header", "required": False, "description": description,
     "schema": {"type": "number", "exclusiveMinimum": 0}}
    for name, description in (
        ("X-Request-Timeout", "Seconds this request may take (less than the server's `request_timeout_s`); "
                              "past it, 503 with Retry-After and no charge."),
        ("X-Stainless-Read-Timeout", "openai-python's read timeout, honoured as X-Request-Timeout."),
    )
]

#: Every operation in the schema and the error statuses it can answer (besides its success status).
STATUSES: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/v1/embeddings"): (400, 401, 402, 403, 404, 409, 413, 429, 503),
    ("post", "/embed"): (400, 401, 402, 403, 404, 409, 413, 429, 503),
    ("post", "/"): (400, 401, 402, 403, 404, 409, 413, 429, 503),
    ("get", "/info"): (404,),
    ("post", "/tokenize"): (400, 401, 403, 404, 413, 429),
    ("post", "/v2/embed"): (400, 401, 402, 403, 404, 409, 413, 429, 503),
    ("get", "/v1/models"): (),
    ("get", "/v1/models/{model_id}"): (404,),
    ("get", "/v1/catalog"): (),
    ("get", "/v1/catalog/{model_id}"): (404,),
    ("get", "/health"): (),
    ("get", "/ready"): (503,),
    ("get", "/metrics"): (401, 403),
    ("post", "/v1/accounts"): (400, 403, 404, 409, 413, 429),
    ("get", "/v1/keys"): (401, 403, 404, 429),
    ("post", "/v1/keys"): (400, 401, 403, 404, 413, 429),
    ("delete", "/v1/keys/{key_id}"): (401, 403, 404, 429),
    ("get", "/v1/usage"): (400, 401, 403, 404, 429),
    ("post", "/v1/admin/credits"): (400, 401, 402, 403, 404, 413, 429),
    ("get", "/v1/admin/accounts"): (400, 401, 403, 404, 429),
    ("post", "/v1/files"): (400, 401, 403, 413, 429, 503),
    ("get", "/v1/files/{file_id}"): (401, 403, 404, 429, 503),
    ("get", "/v1/files/{file_id}/content"): (401, 403, 404, 429, 503),
    ("delete", "/v1/files/{file_id}"): (401, 403, 404, 409, 429, 503),
    ("post", "/v1/batches"): (400, 401, 403, 404, 413, 429, 503),
    ("get", "/v1/batches"): (400, 401, 403, 404, 429, 503),
    ("get", "/v1/batches/{batch_id}"): (401, 403, 404, 429, 503),
    ("post", "/v1/batches/{batch_id}/cancel"): (401, 403, 404, 409, 429, 503),
}
#: The batch endpoints (docs/batches.md).
BATCH_OPERATIONS = {op for op in STATUSES if op[1].startswith(("/v1/files", "/v1/batches"))}
#: Operations that need an API key when accounts are on (the others are public).
KEYED = {("post", "/v1/embeddings"), ("post", "/embed"), ("post", "/"), ("post", "/tokenize"), ("post", "/v2/embed"),
         ("get", "/v1/keys"), ("post", "/v1/keys"), ("delete", "/v1/keys/{key_id}"),
         ("get", "/v1/usage"), ("post", "/v1/admin/credits"), ("get", "/v1/admin/accounts"), *BATCH_OPERATIONS}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """null means "the default", as in OpenAI's API."""
    return {"anyOf": [schema, {"type": "null"}]}


def embeddings_request(max_inputs: int) -> dict[str, Any]:
    token = {"type": "integer", "minimum": 0, "maximum": MAX_INT}
    names = {"type": "array", "items": {"type": "string", "minLength": 1}}
    provider = {
        "type": "object",
        "additionalProperties": False,
        "description": "OpenRouter's provider preferences: which of the model's providers may serve it, "
                       "in what order (docs/routing.md).",
        "properties": {
            "order": _nullable({**names, "description": "provider names to try first, in this order"}),
            "only": _nullable({**names, "description": "allow only these providers"}),
            "ignore": _nullable({**names, "description": "never these providers"}),
            "allow_fallbacks": _nullable({"type": "boolean", "default": True}),
            "sort": _nullable({"enum": list(SORTS)}),
            "max_price": _nullable({"type": "object", "additionalProperties": {"type": "number", "minimum": 0},
                                    "description": '{"prompt": USD per million tokens}'}),
            "require_parameters": _nullable({"type": "boolean"}),
            "zdr": _nullable({"type": "boolean"}),
            "data_collection": _nullable({"type": "string"}),
            "quantizations": _nullable({"type": "array", "items": {"type": "string"}}),
        },
    }
    many = {"minItems": 1, "maxItems": max_inputs}
    return {
        "type": "object",
        "title": "EmbeddingsRequest",
        "additionalProperties": False,
        "required": ["model", "input"],
        "properties": {
            "model": {"type": "string", "minLength": 1,
                      "description": "a served model's name or alias; may end in :floor or :nitro"},
            "input": {"anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", **many, "items": {"type": "string", "minLength": 1}},
                {"type": "array", **many, "items": token},
                {"type": "array", **many, "items": {"type": "array", "minItems": 1, "items": token}},
            ], "description": "text, texts, token ids (without special tokens), or lists of token ids"},
            "encoding_format": _nullable({"enum": list(ENCODING_FORMATS), "default": "float"}),
            "dimensions": _nullable({"type": "integer", "minimum": 1, "maximum": MAX_INT}),
            "user": _nullable({"type": "string"}),
            "input_type": _nullable({"enum": list(INPUT_TYPES), "default": "document"}),
            "instruction": _nullable({"type": "string"}),
            "truncate": _nullable({"enum": list(TRUNCATE_MODES), "default": "end"}),
            "normalize": _nullable({"type": "boolean", "default": True}),
            "provider": _nullable(provider),
            "cache": _nullable({"type": "boolean", "default": True,
                                "description": "false: neither read nor write the embedding cache"}),
            "embedding_type": _nullable({"enum": list(EMBEDDING_TYPES), "default": "float",
                                         "description": "compact vectors: integers (float) or their raw bytes "
                                                        "(base64); int8/uint8 need normalize=true"}),
        },
    }


def tei_embed_request(max_inputs: int) -> dict[str, Any]:
    many = {"minItems": 1, "maxItems": max_inputs}
    token = {"type": "integer", "minimum": 0, "maximum": MAX_INT}
    return {
        "type": "object", "title": "TeiEmbedRequest", "additionalProperties": False, "required": ["inputs"],
        "properties": {
            "inputs": {"anyOf": [{"type": "string", "minLength": 1},
                                 {"type": "array", **many, "items": {"type": "string", "minLength": 1}},
                                 {"type": "array", **many, "items": token},
                                 {"type": "array", **many, "items": {"type": "array", "minItems": 1, "items": token}}]},
            "normalize": _nullable({"type": "boolean", "default": True}),
            "truncate": _nullable({"type": "boolean", "default": False}),
            "truncation_direction": _nullable({"enum": ["Right", "Left", "right", "left"], "default": "Right"}),
            "prompt_name": _nullable({"type": "string", "description": "query, document, or a task the model's card "
                                                                       "names (GET /info: prompts)"}),
            "dimensions": _nullable({"type": "integer", "minimum": 1, "maximum": MAX_INT}),
        },
    }


def tei_tokenize_request(max_inputs: int) -> dict[str, Any]:
    return {
        "type": "object", "title": "TeiTokenizeRequest", "additionalProperties": False, "required": ["inputs"],
        "properties": {
            "inputs": {"anyOf": [{"type": "string", "minLength": 1},
                                 {"type": "array", "minItems": 1, "maxItems": max_inputs,
                                  "items": {"type": "string", "minLength": 1}}]},
            "add_special_tokens": _nullable({"type": "boolean", "default": True}),
            "prompt_name": _nullable({"type": "string"}),
        },
    }


def cohere_embed_request(max_inputs: int) -> dict[str, Any]:
    return {
        "type": "object", "title": "CohereEmbedRequest", "additionalProperties": False,
        "required": ["model", "texts", "input_type"],
        "properties": {
            "model": {"type": "string", "minLength": 1},
            "texts": {"type": "array", "minItems": 1, "maxItems": max_inputs,
                      "items": {"type": "string", "minLength": 1}},
            "input_type": {"enum": ["search_query", "search_document", "classification", "clustering"]},
            "embedding_types": _nullable({"type": "array", "minItems": 1,
                                          "items": {"enum": [*EMBEDDING_TYPES, "base64"]}}),
            "truncate": _nullable({"enum": ["END", "START", "NONE"], "default": "END"}),
            "output_dimension": _nullable({"type": "integer", "minimum": 1, "maximum": MAX_INT}),
        },
    }


EMBEDDINGS_RESPONSE: dict[str, Any] = {
    "type": "object",
    "title": "EmbeddingsResponse",
    "required": ["object", "data", "model", "usage"],
    "properties": {
        "object": {"const": "list"},
        "data": {"type": "array", "items": {
            "type": "object", "required": ["object", "index", "embedding"],
            "properties": {"object": {"const": "embedding"}, "index": {"type": "integer"},
                           "embedding": {"anyOf": [{"type": "array", "items": {"type": "number"}},
                                                   {"type": "string", "description": "base64 of the raw bytes"}]}}}},
        "model": {"type": "string"},
        "usage": {"type": "object", "required": ["prompt_tokens", "total_tokens"],
                  "properties": {"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}}},
    },
}


def rewrite(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """FastAPI's schema -> the real one (see the module docstring)."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Error"] = ERROR_SCHEMA
    schemas["EmbeddingsRequest"] = embeddings_request(settings.max_inputs)
    schemas["EmbeddingsResponse"] = EMBEDDINGS_RESPONSE
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer",
                                                "description": "an API key, gr-<prefix>-<secret>"}}
    schemas["TeiError"] = TEI_ERROR_SCHEMA
    schemas["CohereError"] = COHERE_ERROR_SCHEMA
    schemas["TeiEmbedRequest"] = tei_embed_request(settings.max_inputs)
    schemas["TeiTokenizeRequest"] = tei_tokenize_request(settings.max_inputs)
    schemas["CohereEmbedRequest"] = cohere_embed_request(settings.max_inputs)
    seen = set()
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            statuses = STATUSES.get((method, path))
            if statuses is None:
                raise RuntimeError(f"{method.upper()} {path} is not in api.openapi.STATUSES: list its statuses")
            seen.add((method, path))
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            shape = ("TeiError" if path in TEI_PATHS or (method, path) == ("post", "/")
                     else "CohereError" if path in COHERE_PATHS else "Error")
            error = {"application/json": {"schema": {"$ref": f"#/components/schemas/{shape}"}}}
            for status in statuses:
                responses[str(status)] = {"description": WHY[status], "content": error}
                if status in (429, 503):
                    responses[str(status)]["headers"] = RETRY_AFTER
            if (method, path) in KEYED:
                operation["security"] = [{"bearer": []}]
    missing = set(STATUSES) - seen
    if missing:
        raise RuntimeError(f"api.openapi.STATUSES lists operations the app does not have: {sorted(missing)}")

    embeddings = schema["paths"]["/v1/embeddings"]["post"]
    embeddings["parameters"] = [*embeddings.get("parameters", []), *TIMEOUT_PARAMETERS]
    embeddings["requestBody"] = {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/EmbeddingsRequest"}}}}
    embeddings["responses"]["200"] = {"description": "One vector per input, in order.", "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/EmbeddingsResponse"}}}}
    schema["paths"]["/v1/files"]["post"]["requestBody"] = FILE_UPLOAD
    schema["paths"]["/v1/files/{file_id}/content"]["get"]["responses"]["200"] = {
        "description": "The file as uploaded or written (JSONL).",
        "content": {"application/jsonl": {"schema": {"type": "string"}}}}
    tei_answer = {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}
    for path, body, answer in (
            ("/", "TeiEmbedRequest", tei_answer),
            ("/embed", "TeiEmbedRequest", tei_answer),
            ("/tokenize", "TeiTokenizeRequest", {"type": "array", "items": {"type": "array", "items": {
                "type": "object", "required": ["id", "text", "special"]}}}),
            ("/v2/embed", "CohereEmbedRequest", {"type": "object", "required": ["id", "embeddings", "meta"]})):
        operation = schema["paths"][path]["post"]
        operation["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}}}
        operation["responses"]["200"] = {"description": "One answer per input, in order.",
                                         "content": {"application/json": {"schema": answer}}}
    return schema


#: POST /v1/files reads its multipart body by hand (its size counted while it streams).
FILE_UPLOAD: dict[str, Any] = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["purpose", "file"],
    "properties": {"purpose": {"enum": ["batch"]},
                   "file": {"type": "string", "format": "binary",
                            "description": "JSONL: one request per line (docs/batches.md)"}}}}}}


def install(app: FastAPI, settings: Settings) -> None:
    """Serve the rewritten schema at /openapi.json (built once, on first use)."""
    default = app.openapi
    built: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not built:
            built.update(rewrite(default(), settings))
        return built

    app.openapi = openapi
