"""The code a developer copies from a model page: curl and openai-python, with the real model name.

Queries carry the model's default query instruction through our extension
fields (``input_type``, ``instruction``), which the openai client sends with
``extra_body``; documents go in with ``input_type="document"`` and no instruction.
"""

from __future__ import annotations

import json

from gigarouter.catalog.cards import ModelCard

EXAMPLE_QUERY = "how much protein should a female eat"
EXAMPLE_DOCUMENT = ("As a general guideline, the CDC's average requirement of protein for women "
                    "ages 19 to 70 is 46 grams per day.")


def query_extras(card: ModelCard) -> dict[str, str]:
    extras = {"input_type": "query"}
    if card.default_query_instruction:
        extras["instruction"] = card.default_query_instruction
    return extras


def curl(card: ModelCard, *, model: str, base_url: str, api_key: str | None = None) -> str:
    """``api_key``: the key itself in the snippet (shown once, after sign-up); else ``$GIGAROUTER_API_KEY``."""
    body = json.dumps({"model": model, "input": [EXAMPLE_QUERY], **query_extras(card)}, indent=2, ensure_ascii=False)
    body = body.replace("'", "'\\''")   # inside a single-quoted shell string
    return (f"curl {base_url}/v1/embeddings \\\n"
            f"  -H \"Authorization: Bearer {api_key or '$GIGAROUTER_API_KEY'}\" \\\n"
            f"  -H \"Content-Type: application/json\" \\\n"
            f"  -d '{body}'")


def python(card: ModelCard, *, model: str, base_url: str, api_key: str | None = None) -> str:
    extras = ", ".join(f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in query_extras(card).items())
    key = json.dumps(api_key) if api_key else "os.environ[\"GIGAROUTER_API_KEY\"]"
    return "\n".join([
        *([] if api_key else ["import os"]),
        "from openai import OpenAI",
        "",
        f"client = OpenAI(base_url={json.dumps(base_url + '/v1')}, api_key={key})",
        "",
        "# Queries: the model's query instruction goes in extra_body.",
        "query = client.embeddings.create(",
        f"    model={json.dumps(model)},",
        f"    input=[{json.dumps(EXAMPLE_QUERY)}],",
        f"    extra_body={{{extras}}},",
        ")",
        "# Documents: no instruction.",
        "docs = client.embeddings.create(",
        f"    model={json.dumps(model)},",
        f"    input=[{json.dumps(EXAMPLE_DOCUMENT, ensure_ascii=False)}],",
        "    extra_body={\"input_type\": \"document\"},",
        ")",
        "print(len(query.data[0].embedding), query.usage.total_tokens)",
    ])
