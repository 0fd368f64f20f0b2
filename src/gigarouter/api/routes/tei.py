"""Hugging Face text-embeddings-inference's protocol: ``POST /embed``, ``GET /info``, ``POST /tokenize``.

So TEI's clients (``huggingface_hub.InferenceClient.feature_extraction``, LangChain's
``HuggingFaceEndpointEmbeddings``, LlamaIndex's ``TextEmbeddingsInference``) work
against gigarouter with a base URL. A TEI server serves one model: these routes serve
the server's first model (the first of ``GET /v1/models``), or the one named in the
``x-gigarouter-model`` header. ``POST /`` is ``/embed``, as in TEI. The body is translated
into the OpenAI request and runs the same pipeline (api/pipeline.py): the same key, limits, metering and cache. Errors
come in TEI's shape (``{"error", "error_type"}``, api/errors.py).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from gigarouter.api.deps import GateDep, JsonBody, MetricsDep, RouterDep, SettingsDep
from gigarouter.api.pipeline import serve_embeddings
from gigarouter.api.schemas import EmbeddingRequest, parse_embedding_request
from gigarouter.errors import InputTooLong, InvalidRequest, ModelNotFound, shown
from gigarouter.pooling.encoding import finish, to_json
from gigarouter.router.route import Route
from gigarouter.router.router import Router

router = APIRouter()

MODEL_HEADER = "x-gigarouter-model"
EMBED_FIELDS = {"inputs", "normalize", "truncate", "truncation_direction", "prompt_name", "dimensions"}
TOKENIZE_FIELDS = {"inputs", "add_special_tokens", "prompt_name"}
#: prompt_name values that mean "the text as it is" and "a query" (sentence-transformers' usual names).
DOCUMENT_PROMPTS = ("document", "passage", "doc")
QUERY_PROMPTS = ("query",)


@router.post("/embed")
@router.post("/")      # TEI's root route: huggingface_hub's InferenceClient(model=URL) posts to the URL itself
async def embed(request: Request, body: JsonBody, settings: SettingsDep, models: RouterDep, gate: GateDep,
                metrics: MetricsDep) -> Response:
    principal = await gate.authenticate(request.headers.get("authorization"), scope="embed")
    route = _route(request, models)
    req = parse_embed(body, model=route.name, route=route, max_inputs=settings.max_inputs)

    def render(vectors: np.ndarray, **_: Any) -> np.ndarray:
        return to_json(finish(vectors, dimensions=req.dimensions, normalize=req.normalize))

    try:
        return await serve_embeddings(request, req, principal, body=body, render=render, settings=settings,
                                      models=models, gate=gate, metrics=metrics)
    except InputTooLong as exc:   # say how to cut it in TEI's terms
        raise InputTooLong(exc.message.replace("send truncate='end' or 'start'", "send truncate=true"),
                           param="inputs") from None


@router.get("/info")
async def info(request: Request, settings: SettingsDep, models: RouterDep) -> dict[str, Any]:
    route = _route(request, models)
    recipe = route.recipe
    pooling = str(recipe.pooling) if recipe is not None else "mean"
    max_tokens = recipe.max_tokens if recipe is not None else route.max_tokens
    return {
        "model_id": route.card.hub_id if route.card is not None else route.name,
        "model_sha": None,
        # the configured dtype ("auto": bfloat16 on a GPU, float32 on a CPU; docs/models.md)
        "model_dtype": getattr(getattr(route.local, "config", None), "dtype", None) or "unknown",
        "model_type": {"embedding": {"pooling": pooling}},
        "max_concurrent_requests": 512,
        "max_input_length": max_tokens,
        "max_batch_tokens": max(settings.interactive_max_tokens, max_tokens or 0),
        "max_batch_requests": None,
        "max_client_batch_size": settings.max_inputs,
        "auto_truncate": False,
        "tokenization_workers": 1,
        "version": "gigarouter",
        "sha": None,
        "docker_label": None,
        "prompts": _prompts(route),
    }


@router.post("/tokenize")
async def tokenize(request: Request, body: JsonBody, settings: SettingsDep, models: RouterDep,
                   gate: GateDep) -> list[list[dict[str, Any]]]:
    await gate.authenticate(request.headers.get("authorization"), scope="embed")
    route = _route(request, models)
    texts, add_special, input_type, instruction = _parse_tokenize(body, route, max_inputs=settings.max_inputs)
    recipe = route.recipe
    if recipe is None:
        raise InvalidRequest(f"model {route.name!r} has no tokenizer loaded in this process (still loading, or "
                             "served by a remote provider only)", param="inputs")
    return await run_in_threadpool(partial(_tokens, recipe, texts, add_special=add_special, input_type=input_type,
                                           instruction=instruction))


# -- parsing -------------------------------------------------------------------------------------

def parse_embed(body: Any, *, model: str, route: Route, max_inputs: int) -> EmbeddingRequest:
    """TEI's /embed body as the OpenAI request it means."""
    _check_fields(body, EMBED_FIELDS)
    truncate = body.get("truncate")
    if truncate is not None and not isinstance(truncate, bool):
        raise InvalidRequest("truncate must be true or false", param="truncate")
    direction = _direction(body.get("truncation_direction"))
    input_type, instruction = _prompt(body.get("prompt_name"), route)
    openai = {"model": model, "input": body.get("inputs"), "normalize": body.get("normalize"),
              "dimensions": body.get("dimensions"), "input_type": input_type, "instruction": instruction,
              "truncate": direction if truncate else "none"}
    if "inputs" not in body:
        raise InvalidRequest("you must provide inputs", param="inputs")
    try:
        return parse_embedding_request(openai, max_inputs=max_inputs)
    except InvalidRequest as exc:
        raise _renamed(exc) from None


def _parse_tokenize(body: Any, route: Route, *, max_inputs: int) -> tuple[list[str], bool, str, str | None]:
    _check_fields(body, TOKENIZE_FIELDS)
    inputs = body.get("inputs")
    texts = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise InvalidRequest("inputs must be a non-empty string or a non-empty array of them", param="inputs")
    if len(texts) > max_inputs:
        raise InvalidRequest(f"inputs has {len(texts)} items; at most {max_inputs} are allowed", param="inputs")
    add_special = body.get("add_special_tokens", True)
    if not isinstance(add_special, bool):
        raise InvalidRequest("add_special_tokens must be true or false", param="add_special_tokens")
    input_type, instruction = _prompt(body.get("prompt_name"), route)
    return texts, add_special, input_type, instruction


def _check_fields(body: Any, known: set[str]) -> None:
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", param=None)
    unknown = sorted(set(body) - known)
    if unknown:
        name = shown(unknown[0])
        raise InvalidRequest(f"unknown field {name}", param=name)


def _direction(value: Any) -> str:
    """TEI's truncation_direction (Right | Left; TEI's own clients send either case) as ours."""
    if value is None:
        return "end"
    if isinstance(value, str) and value.lower() in ("right", "left"):
        return "end" if value.lower() == "right" else "start"
    raise InvalidRequest("truncation_direction must be 'Right' or 'Left'", param="truncation_direction")


def _prompt(name: Any, route: Route) -> tuple[str, str | None]:
    """prompt_name -> (input_type, instruction): a query, a document, or one of the card's named tasks."""
    if name is None or (isinstance(name, str) and name.lower() in DOCUMENT_PROMPTS):
        return "document", None
    if isinstance(name, str) and name.lower() in QUERY_PROMPTS:
        return "query", None
    named = route.card.task_instructions if route.card is not None else {}
    if isinstance(name, str) and name in named:
        return "query", name
    known = ", ".join(repr(p) for p in _prompts(route))
    raise InvalidRequest(f"prompt_name {shown(name)} is not a prompt of model {route.name!r} (it has {known})",
                         param="prompt_name")


def _prompts(route: Route) -> dict[str, str]:
    """The prompts this model takes, as TEI lists them: name -> the instruction text."""
    card = route.card
    prompts = {"query": (card.default_query_instruction if card is not None else None) or "",
               "document": ""}
    if card is not None:
        prompts.update(card.task_instructions)
    return prompts


def _renamed(exc: InvalidRequest) -> InvalidRequest:
    """An error found by the OpenAI parser, with TEI's field names."""
    param = exc.param
    message = exc.message
    if param is not None and param.startswith("input"):
        param = "inputs" + param[len("input"):]
        message = message.replace("input", "inputs", 1) if message.startswith("input") else message
    if param == "truncate":
        param = "truncation_direction"
    return type(exc)(message, param=param, code=exc.code)


def _route(request: Request, models: Router) -> Route:
    name = request.headers.get(MODEL_HEADER)
    if name is not None:
        route, _ = models.route(name)
        return route
    if not models.routes:
        raise ModelNotFound("this server serves no model", param="model")
    route = models.routes[0]
    request.state.model = route.name
    return route


# -- tokenize ------------------------------------------------------------------------------------

def _tokens(recipe, texts: list[str], *, add_special: bool, input_type: str,
            instruction: str | None) -> list[list[dict[str, Any]]]:
    """TEI's /tokenize answer. With special tokens: exactly the ids the model sees (instruction and
    template included); offsets are then left out (null), as TEI leaves them for special tokens."""
    tokenizer = recipe.tokenizer
    if not add_special:
        out = []
        for text, enc in zip(texts, tokenizer.encode_batch(texts, add_special_tokens=False), strict=True):
            out.append([{"id": i, "text": text[a:b], "special": False, "start": a, "stop": b}
                        for i, (a, b) in zip(enc.ids, enc.offsets, strict=True)])
        return out
    specials = set(tokenizer.get_added_tokens_decoder())
    items = recipe.prepare_texts(texts, input_type=input_type, instruction=instruction, truncate="end")
    return [[{"id": i, "text": tokenizer.id_to_token(i), "special": i in specials, "start": None, "stop": None}
             for i in item.token_ids] for item in items]
