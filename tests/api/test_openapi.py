"""/openapi.json tells the truth: schemathesis against the live app finds no server error and no status
code that the schema does not list, with bounded examples (fits CI).

The app is the real one (accounts on, SQLite, the fake engine): a uvicorn server in a thread,
called over HTTP with an admin key, so every operation gets past authentication to its
validation and its handler.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gigarouter.accounts import keys, migrations
from gigarouter.accounts.db import make_engine
from gigarouter.accounts.store import AccountStore, KeySpec
from gigarouter.api import openapi
from gigarouter.api.app import create_app
from gigarouter.api.schemas import KNOWN_FIELDS
from gigarouter.settings import Settings
from tests.conftest import FakeEngine, fake_loader, live_server

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    data = Path(tmp_path_factory.mktemp("openapi"))
    config = Settings(data_dir=data, server_secret="openapi-tests-secret-0123456789", auth="required")
    migrations.upgrade(config.resolved_database_url)
    engine = make_engine(config.resolved_database_url, pool_size=1)
    _, admin = AccountStore(engine, keys.server_secret(config)).create_account(
        credit_micro=100_000_000, key=KeySpec(scopes=frozenset({"admin"})))
    engine.dispose()
    with live_server(config, loader=fake_loader(FakeEngine())) as base:
        yield base, admin.key


# The schema the app serves, built without a server (the live one serves the same: test below).
schema = schemathesis.openapi.from_dict(create_app(Settings(data_dir=Path("/nonexistent"))).openapi())


@schema.parametrize()
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_the_schema_holds_for_generated_requests(case, live_api):
    base, key = live_api
    case.call_and_validate(base_url=base, headers={"Authorization": f"Bearer {key}"}, checks=CHECKS)


@schema.parametrize()
@settings(max_examples=5, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_the_schema_holds_without_a_key(case, live_api):
    base, _ = live_api
    case.call_and_validate(base_url=base, checks=CHECKS)


def test_the_live_app_serves_that_schema(live_api):
    base, _ = live_api
    assert httpx.get(f"{base}/openapi.json").json() == schema.raw_schema


def test_every_operation_lists_its_statuses_and_none_is_422(tmp_path):
    spec = create_app(Settings(data_dir=tmp_path)).openapi()
    operations = {(m, p): op for p, ops in spec["paths"].items() for m, op in ops.items()}
    assert set(operations) == set(openapi.STATUSES)
    for (method, path), op in operations.items():
        assert "422" not in op["responses"], (method, path)
        assert {int(s) for s in op["responses"] if not s.startswith("2")} == set(openapi.STATUSES[method, path])
    body = spec["components"]["schemas"]["EmbeddingsRequest"]
    # Exactly the fields the parser takes (it refuses others, and so does the schema).
    assert set(body["properties"]) == KNOWN_FIELDS and "cache" in KNOWN_FIELDS
    for path in ("/", "/embed", "/tokenize", "/v2/embed"):    # TEI's and Cohere's bodies and error shapes
        operation = operations["post", path]
        assert operation["requestBody"]["required"]
        shape = operation["responses"]["400"]["content"]["application/json"]["schema"]["$ref"]
        assert shape.endswith("CohereError" if path == "/v2/embed" else "TeiError")
    assert "/v1/embeddings" in spec["paths"] and operations["post", "/v1/embeddings"]["requestBody"]["required"]
    assert list(operations["get", "/metrics"]["responses"]["200"]["content"]) == ["text/plain"]
    for name in ("Grant", "NewKey", "SignUp"):              # the accounts routes' real bodies
        assert name in spec["components"]["schemas"]
