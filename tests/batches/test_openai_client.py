"""The Batch API through the unmodified openai client against a live server with accounts on.

Each good line gets the answer POST /v1/embeddings gives, each bad line fails
alone with an OpenAI-shaped error line, request_counts are exact, and the
account pays exactly the sum over good lines of (their tokens x price x (1 -
batch_discount)), rounded up per line, nothing for bad ones.
"""

from __future__ import annotations

import threading

import httpx
import numpy as np
import openai
import pytest

from gigarouter.accounts import ledger
from tests.accounts.helpers import check_invariants
from tests.accounts.test_http_money import account_with, books, store_for
from tests.batches.helpers import (
    MODEL,
    PRICE,
    client_for,
    jsonl,
    lines_of,
    priced_model,
    request_line,
    submit,
    wait_done,
)
from tests.conftest import FakeEngine, fake_loader, live_server

DISCOUNT = 0.25          # not the default 0.5, so "price x (1 - discount)" cannot pass as "price x discount"
GOOD = {
    "one": {"model": MODEL, "input": "hello world", "encoding_format": "float"},
    "two": {"model": MODEL, "input": ["hello world", "a longer sentence to embed"], "encoding_format": "float"},
    "query": {"model": MODEL, "input": "what is a batch?", "input_type": "query", "encoding_format": "float"},
    "b64": {"model": MODEL, "input": "base64 please"},
    "dims": {"model": MODEL, "input": "short", "dimensions": 4, "encoding_format": "float"},
    "ids": {"model": MODEL, "input": [[7592, 2088]], "encoding_format": "float"},
}


def _bad_lines() -> list[str]:
    return [
        '{"custom_id": "broken", "method": "POST", "url": "/v1/embeddings", "body": {',      # not JSON
        request_line("wrong-url", GOOD["one"], url="/v1/chat/completions"),
        request_line("wrong-model", {"model": "no-such-model", "input": "x"}),
        request_line("too-long", {"model": MODEL, "input": "word " * 400, "truncate": "none"}),
        '{"method": "POST", "url": "/v1/embeddings", "body": {"model": "all-minilm-l6-v2", "input": "x"}}',
        request_line("one", GOOD["one"]),                                                     # a duplicate
    ]


def test_a_batch_through_the_openai_client(settings):
    settings = settings.with_(models=(priced_model(),), batch_discount=DISCOUNT)
    account_id, key = account_with(settings, credit_micro=10_000_000)
    lines = [request_line(cid, body) for cid, body in GOOD.items()]
    lines[1:1] = _bad_lines()          # bad lines among the good ones
    with live_server(settings, loader=fake_loader(FakeEngine())) as base:
        client = client_for(base, key)
        _, before = books(settings, account_id)
        created = submit(client, jsonl(lines), metadata={"corpus": "test"})
        assert created.status == "validating" and created.endpoint == "/v1/embeddings"
        batch = wait_done(client, created.id)
        _, after = books(settings, account_id)

        assert batch.status == "completed" and batch.metadata == {"corpus": "test"}
        assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (12, 6, 6)
        outputs = {line["custom_id"]: line for line in lines_of(client, batch.output_file_id)}
        errors = lines_of(client, batch.error_file_id)
        assert set(outputs) == set(GOOD) and len(errors) == 6

        # Each good line: the very answer POST /v1/embeddings gives (computed after, at full price).
        for custom_id, line in outputs.items():
            assert line["id"].startswith("batch_req_") and line["error"] is None
            assert line["response"]["status_code"] == 200
            direct = httpx.post(f"{base}/v1/embeddings", json=GOOD[custom_id],
                                headers={"authorization": f"Bearer {key}"}, timeout=60).json()
            body = line["response"]["body"]
            # (the direct request may be answered from the embedding cache the batch filled: same vectors)
            assert body["usage"]["prompt_tokens"] == direct["usage"]["prompt_tokens"]
            assert body["model"] == direct["model"] == MODEL
            for got, want in zip(body["data"], direct["data"], strict=True):
                if isinstance(want["embedding"], str):
                    assert got["embedding"] == want["embedding"]
                else:
                    np.testing.assert_array_equal(got["embedding"], want["embedding"])

        # Each bad line fails alone, saying why, in OpenAI's error-file shape.
        by_id = {}
        for line in errors:
            by_id.setdefault(line["custom_id"], []).append(line)
        assert by_id[None][0]["error"]["code"] in ("invalid_json", "missing_custom_id")
        assert {line["error"]["code"] for line in by_id[None]} == {"invalid_json", "missing_custom_id"}
        assert all(line["response"] is None for line in by_id[None])
        assert by_id["wrong-url"][0]["error"]["code"] == "invalid_url"
        assert by_id["one"][0]["error"]["code"] == "duplicate_custom_id"
        for custom_id, status, code in (("wrong-model", 404, "model_not_found"),
                                        ("too-long", 400, "context_length_exceeded")):
            line = by_id[custom_id][0]
            assert line["error"] is None and line["response"]["status_code"] == status
            assert line["response"]["body"]["error"]["code"] == code
            assert set(line["response"]["body"]["error"]) == {"message", "type", "param", "code"}

        # The charge: per good line, its tokens at the discounted price (those answered from the embedding
        # cache, at the cached price: 0 here), rounded up once per line.
        price = ledger.price_micro_per_million(PRICE * (1 - DISCOUNT))
        usages = [line["response"]["body"]["usage"] for line in outputs.values()]
        expected = sum(ledger.cost_micro(u["prompt_tokens"], price,
                                         cached_tokens=u["prompt_tokens_details"]["cached_tokens"]) for u in usages)
        assert sum(u["prompt_tokens_details"]["cached_tokens"] for u in usages) > 0    # "ids" repeats "one"
        tokens = sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in outputs.values())
        assert expected > 0 and before - after == expected
        assert batch.usage.total_tokens == tokens and batch.model_extra["cost_usd"] == ledger.format_usd(expected)
        with store_for(settings) as store:
            check_invariants(store.engine)

        # Files and the list, as the client reads them.
        assert client.files.content(created.input_file_id).content == jsonl(lines)
        assert client.files.retrieve(created.input_file_id).purpose == "batch"
        assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"
        assert [b.id for b in client.batches.list()] == [batch.id]
        assert client.files.delete(created.input_file_id).deleted
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(created.input_file_id)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_limits_ownership_queue_and_cancel(settings):
    settings = settings.with_(models=(priced_model(),), batch_max_file_bytes=4096, batch_max_lines=6,
                              batch_max_queued_per_account=8, batch_concurrency=2)
    _, key = account_with(settings, credit_micro=10_000_000)
    _, other_key = account_with(settings, credit_micro=10_000_000)
    five = jsonl([request_line(f"r{i}", {"model": MODEL, "input": f"text {i}"}) for i in range(5)])
    engine = FakeEngine()
    with live_server(settings, loader=fake_loader(engine)) as base:
        client, other = client_for(base, key), client_for(base, other_key)

        with pytest.raises(openai.APIStatusError) as too_big:
            client.files.create(file=("big.jsonl", b"x" * 5000 + b"\n"), purpose="batch")
        assert too_big.value.status_code == 413
        for data, purpose, code in ((jsonl([request_line(f"r{i}", GOOD["one"]) for i in range(7)]), "batch",
                                     "too_many_lines"),
                                    (five, "fine-tune", "invalid_purpose"),
                                    (b"\xff\xfe not text\n", "batch", "invalid_file"),
                                    (b"\n\n", "batch", "empty_file")):
            with pytest.raises(openai.BadRequestError) as bad:
                client.files.create(file=("f.jsonl", data), purpose=purpose)
            assert bad.value.code == code

        # Hold the device: the first batch stays in progress with its lines in flight.
        engine.gate = threading.Event()
        engine.entered.clear()
        first = submit(client, five)
        assert engine.entered.wait(30)
        with pytest.raises(openai.RateLimitError) as full:          # 5 queued + 5 more > 8
            submit(client, five)
        assert full.value.code == "batch_queue_full" and full.value.response.headers["retry-after"]

        # Another account sees none of it.
        for call in (lambda: other.batches.retrieve(first.id), lambda: other.batches.cancel(first.id),
                     lambda: other.files.retrieve(first.input_file_id),
                     lambda: other.files.content(first.input_file_id),
                     lambda: other.files.delete(first.input_file_id),
                     lambda: other.batches.create(input_file_id=first.input_file_id, endpoint="/v1/embeddings",
                                                  completion_window="24h")):
            with pytest.raises(openai.NotFoundError):
                call()
        assert list(other.batches.list()) == []
        with pytest.raises(openai.ConflictError):                  # the input of a running batch stays
            client.files.delete(first.input_file_id)

        assert client.batches.cancel(first.id).status == "cancelling"
        engine.gate.set()
        cancelled = wait_done(client, first.id)
        counts = cancelled.request_counts
        assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
        assert counts.total == 5 and counts.failed == 0 and 1 <= counts.completed < 5
        assert len(lines_of(client, cancelled.output_file_id)) == counts.completed
        assert client.batches.cancel(first.id).status == "cancelled"  # again: the same answer
        second = wait_done(client, submit(client, five).id)          # the queue is free again
        assert second.status == "completed" and second.request_counts.completed == 5
        with pytest.raises(openai.ConflictError):
            client.batches.cancel(second.id)

        for body, param in (({"input_file_id": first.input_file_id, "endpoint": "/v1/chat/completions",
                              "completion_window": "24h"}, "endpoint"),
                            ({"input_file_id": first.input_file_id, "endpoint": "/v1/embeddings",
                              "completion_window": "1h"}, "completion_window")):
            answer = httpx.post(f"{base}/v1/batches", json=body, headers={"authorization": f"Bearer {key}"})
            assert answer.status_code == 400 and answer.json()["error"]["param"] == param
        page = client.batches.list(limit=1)
        assert [b.id for b in page.data] == [second.id] and page.has_more
        assert [b.id for b in client.batches.list(limit=1, after=second.id).data] == [first.id]
