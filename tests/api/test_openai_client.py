"""The official openai client, unmodified, against a real server on a real socket."""

from __future__ import annotations

import numpy as np
import pytest
from openai import OpenAI

from tests.conftest import live_server


@pytest.fixture(scope="module")
def client():
    with live_server() as base:
        yield OpenAI(base_url=f"{base}/v1", api_key="unused-in-open-mode", max_retries=0)


def test_default_base64_and_float_give_identical_vectors(client):
    texts = ["The quick brown fox", "jumps over the lazy dog", "Ünïcödé 日本語"]
    default = client.embeddings.create(model="all-minilm-l6-v2", input=texts)      # the client asks for base64
    floats = client.embeddings.create(model="all-minilm-l6-v2", input=texts, encoding_format="float")
    a = np.array([d.embedding for d in default.data])
    b = np.array([d.embedding for d in floats.data])
    assert a.shape == (3, 384)
    np.testing.assert_array_equal(a, b)
    assert default.usage.prompt_tokens == floats.usage.prompt_tokens > 0


def test_extra_body_carries_our_extensions(client):
    r = client.embeddings.create(model="all-minilm-l6-v2", input="what is a llama?",
                                 extra_body={"input_type": "query", "truncate": "none"}, dimensions=128)
    assert len(r.data[0].embedding) == 128
    from openai import BadRequestError
    with pytest.raises(BadRequestError) as err:
        client.embeddings.create(model="all-minilm-l6-v2", input="x", extra_body={"input_type": "passage"})
    assert err.value.body["param"] == "input_type"


def test_models_list(client):
    ids = [m.id for m in client.models.list()]
    assert "all-minilm-l6-v2" in ids
