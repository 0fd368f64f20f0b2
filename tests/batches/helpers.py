"""Building batch input files and waiting for batches, through the unmodified openai client."""

from __future__ import annotations

import io
import json
import time

from openai import OpenAI

from gigarouter.settings import ModelConfig, default_model

MODEL = "all-minilm-l6-v2"
PRICE = 1000.0                  # USD per 1M tokens = 1000 micro-dollars per token
DONE = ("completed", "failed", "expired", "cancelled")


def priced_model(price: float = PRICE) -> ModelConfig:
    return ModelConfig(**{**default_model().__dict__, "price_per_million_usd": price})


def request_line(custom_id: str, body: dict, *, url: str = "/v1/embeddings") -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def jsonl(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def client_for(base: str, key: str = "unused") -> OpenAI:
    # No retries: a 429 must reach the test, not be waited out.
    return OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)


def submit(client: OpenAI, data: bytes, **kwargs):
    uploaded = client.files.create(file=("requests.jsonl", io.BytesIO(data)), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h",
                                 **kwargs)


def wait_done(client: OpenAI, batch_id: str, *, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in DONE:
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} is still {batch.status}: {batch.request_counts}"
        time.sleep(0.05)


def lines_of(client: OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]
