"""One line of a batch: parse it, run it through the /v1/embeddings pipeline at the batch price, write its output.

A line is ``{"custom_id": ..., "method": "POST", "url": "/v1/embeddings", "body": {...}}``.
A line that is no such request (bad JSON, no custom_id, another url or
method, a custom_id used before) fails alone with an error-file line whose
``response`` is null and whose ``error`` says why. A request that fails (an
unknown model, an input too long with ``truncate: none``, no credit) fails
alone too, with ``response.status_code`` and the OpenAI error body that
``POST /v1/embeddings`` would have answered. Both kinds go to the error file.

The request runs exactly as ``POST /v1/embeddings`` runs it (the same
router facade, the same ``run_metered`` block, the same response body), with
three differences: every price is multiplied by ``1 - batch_discount``; the
work rides the scheduler's bulk lane (never the interactive one); and the
charge is keyed per line (an Idempotency-Key ``<batch id>:<line>`` of the
batch's account), so a line charged before a crash is replayed, not run and
charged again.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool

from gigarouter.accounts.gate import Gate, Principal
from gigarouter.accounts.idempotency import fingerprint
from gigarouter.api.deps import parse_json

# One pipeline: a batch line is answered by the very code that answers POST /v1/embeddings.
from gigarouter.api.pipeline import check_dimensions, prepare_call, run_metered
from gigarouter.api.routes.embeddings import openai_payload
from gigarouter.api.schemas import parse_embedding_request
from gigarouter.errors import GigarouterError, InvalidRequest
from gigarouter.metrics import Metrics
from gigarouter.router.preferences import parse_preferences
from gigarouter.router.router import Router
from gigarouter.settings import Settings

MAX_CUSTOM_ID_CHARS = 512


class LineError(Exception):
    """The line is not a request at all: it fails with ``error`` set and no ``response``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class LineRequest:
    index: int
    custom_id: str
    body: Any


@dataclass(frozen=True)
class Outcome:
    """A finished line: its output- or error-file line, and what it used and cost."""

    ok: bool
    output: bytes
    tokens: int = 0
    cost_micro: int = 0


def parse_line(index: int, raw: bytes, *, endpoint: str) -> LineRequest:
    """A line as a request, or ``LineError``; ``custom_id`` is read first so an error line can name it."""
    try:
        line = parse_json(raw)
    except InvalidRequest as exc:
        reason = exc.message.removeprefix("request body is not valid JSON: ")
        raise LineError("invalid_json", f"line {index + 1} is not valid JSON: {reason}") from None
    if not isinstance(line, dict):
        raise LineError("invalid_request", f"line {index + 1} is not a JSON object")
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID_CHARS:
        raise LineError("missing_custom_id", f"line {index + 1}: custom_id must be a string of 1 to "
                        f"{MAX_CUSTOM_ID_CHARS} characters")
    if line.get("method") != "POST":
        raise LineError("invalid_method", f"line {index + 1}: method must be \"POST\"")
    if line.get("url") != endpoint:
        raise LineError("invalid_url", f"line {index + 1}: url must be the batch's endpoint {endpoint!r}")
    if not isinstance(line.get("body"), dict):
        raise LineError("invalid_request", f"line {index + 1}: body must be a JSON object (the request)")
    return LineRequest(index=index, custom_id=custom_id, body=line["body"])


def custom_id_of(raw: bytes) -> str | None:
    """The custom_id of a line, if it has a usable one (for naming it in an error line)."""
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    custom_id = line.get("custom_id") if isinstance(line, dict) else None
    return custom_id if isinstance(custom_id, str) and len(custom_id) <= MAX_CUSTOM_ID_CHARS else None


def error_line(custom_id: str | None, code: str, message: str) -> bytes:
    return orjson.dumps({"id": _line_id(), "custom_id": custom_id, "response": None,
                         "error": {"code": code, "message": message}}) + b"\n"


def response_line(custom_id: str, *, status: int, request_id: str, body: bytes) -> bytes:
    return orjson.dumps({"id": _line_id(), "custom_id": custom_id,
                         "response": {"status_code": status, "request_id": request_id, "body": orjson.Fragment(body)},
                         "error": None}) + b"\n"


def _line_id() -> str:
    return f"batch_req_{uuid.uuid4().hex}"


def discounted(price: float | Decimal | str | None, discount: float) -> Decimal | None:
    """The batch price: ``price`` less ``discount`` (a share of it), exact in decimal."""
    if price is None:
        return None
    return Decimal(str(price)) * (Decimal(1) - Decimal(str(discount)))


def line_request_id(batch_id: str, index: int) -> str:
    return f"{batch_id}:{index}"


@dataclass
class LineRunner:
    """Runs a batch's requests with the services the app's lifespan built."""

    settings: Settings
    router: Router
    gate: Gate
    metrics: Metrics

    async def run(self, request: LineRequest, *, batch_id: str, principal: Principal,
                  charged: Any) -> Outcome:
        """The line's outcome; a retryable failure (busy queue, no provider now) raises for the runner to retry.

        ``charged(request_id)`` gives (tokens, cost) of a line charged before a crash, whose
        response comes back from its idempotency record instead of being computed again.
        """
        request_id = line_request_id(batch_id, request.index)
        try:
            status, body, tokens, cost = await self._embed(request, request_id=request_id, principal=principal,
                                                           charged=charged)
        except GigarouterError as exc:
            if exc.status == 429 or exc.status >= 500:
                raise
            return Outcome(ok=False, output=response_line(request.custom_id, status=exc.status, request_id=request_id,
                                                          body=orjson.dumps(exc.body())))
        return Outcome(ok=True, output=response_line(request.custom_id, status=status, request_id=request_id,
                                                     body=body), tokens=tokens, cost_micro=cost)

    async def _embed(self, line: LineRequest, *, request_id: str, principal: Principal,
                     charged: Any) -> tuple[int, bytes, int, int]:
        settings, discount = self.settings, self.settings.batch_discount
        started = time.perf_counter()
        deadline = time.monotonic() + settings.request_timeout_s
        req = parse_embedding_request(line.body, max_inputs=settings.max_inputs)
        async with self.gate.idempotency(principal, request_id, fingerprint(line.body)) as slot:
            if slot.replay is not None:   # charged before a crash: its stored answer, not charged again
                tokens, cost = await run_in_threadpool(charged, request_id)
                return slot.replay.status, slot.replay.body, tokens, cost
            route, suffix_sort = self.router.route(req.model)
            plan = route.plan(parse_preferences(req.provider, suffix_sort=suffix_sort))
            check_dimensions(req.dimensions, route.dim)
            # interactive_max_tokens=-1: no batch line ever rides the interactive lane.
            call, windows = await prepare_call(route, req, interactive_max_tokens=-1)
            call = dataclasses.replace(call, background=True)   # a local model's background lane
            answered = await run_metered(self.gate, principal, req, route=route, plan=plan, call=call,
                                         windows=windows, render=partial(openai_payload, req),
                                         request_id=request_id, slot=slot, deadline=deadline, started=started,
                                         metrics=self.metrics, price=partial(discounted, discount=discount))
            assert answered is not None       # nothing watches a batch line: it always runs to the end
        tokens = answered.tokens
        self.metrics.tokens.labels(route.name).inc(tokens)
        return 200, answered.content, tokens, answered.cost_micro
