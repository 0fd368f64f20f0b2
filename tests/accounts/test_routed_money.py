"""Every routed request is charged once, at the price of the provider that served it.

Real HTTP end to end: upstream gigarouters in open mode on loopback (the
deterministic fake engine, so every provider's vectors agree with the
gateway's own), and a gateway with accounts on (SQLite and Postgres) whose
route for all-minilm-l6-v2 runs over them as ``[[providers]]`` at different
prices: in-process with a local deployment of its own, or as a subprocess
pure gateway configured from TOML. The books are read back from the usage API
and the database.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from gigarouter.accounts.db import make_engine
from gigarouter.settings import ModelConfig, ProviderConfig, Settings, default_model
from tests.accounts.helpers import check_invariants, worker_env
from tests.accounts.test_http_money import account_with
from tests.conftest import FakeEngine, fake_loader, free_port, live_server, wait_until_ready

MODEL = "all-minilm-l6-v2"
LOCAL, CHEAP, DEAR = 1.0, 0.5, 2.0               # USD per 1M tokens = micro-dollars per token
INPUT = ["hello big world"] * 3                  # [CLS] hello big world [SEP]: 5 tokens each, 15 a request
TOKENS = 15
CREDIT = 1_000_000                               # $1


def cost(tokens: int, price: float) -> int:
    """What a request must cost: rounded up once, to the micro-dollar (computed apart from the ledger)."""
    exact = Fraction(tokens) * Fraction(str(price))      # USD per 1M tokens == micro-dollars per token
    return -(-exact.numerator // exact.denominator)


def remote(name: str, base: str, price: float) -> ProviderConfig:
    return ProviderConfig(name=name, base_url=f"{base}/v1", models=((MODEL, MODEL),), price_per_million_usd=price)


@contextmanager
def upstream(tmp_path: Path, name: str) -> Iterator[str]:
    """An open-mode gigarouter (no accounts database) serving MODEL on the fake engine."""
    with live_server(Settings(data_dir=tmp_path / name), loader=fake_loader(FakeEngine())) as base:
        yield base


def embed(base: str, key: str, request_id: str, provider: dict | None = None, **headers: str) -> httpx.Response:
    body: dict = {"model": MODEL, "input": INPUT}
    if provider is not None:
        body["provider"] = provider
    return httpx.post(f"{base}/v1/embeddings", json=body, timeout=60,
                      headers={"authorization": f"Bearer {key}", "x-request-id": request_id, **headers})


class Books:
    """The gateway's accounts database, read directly."""

    def __init__(self, settings: Settings) -> None:
        self.engine = make_engine(settings.resolved_database_url)

    def close(self) -> None:
        self.engine.dispose()

    def rows(self, sql: str, **params) -> list:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).all()

    def balance(self, account_id: str) -> int:
        return self.rows("SELECT balance_micro FROM accounts WHERE id = :a", a=account_id)[0][0]

    def usage(self, request_id: str):
        rows = self.rows("SELECT provider, tokens, upstream_tokens, cost_micro, status FROM usage_records "
                         "WHERE request_id = :r", r=request_id)
        assert len(rows) == 1, f"{request_id}: {len(rows)} usage records"
        return rows[0]

    def entries(self, request_id: str) -> dict[str, int]:
        """The request's ledger entries by kind (reserve, settle, refund), each at most once."""
        rows = self.rows("SELECT l.kind, l.amount_micro FROM ledger_entries l JOIN reservations r "
                         "ON r.id = l.reservation_id WHERE r.request_id = :r", r=request_id)
        kinds = [k for k, _ in rows]
        assert len(kinds) == len(set(kinds)), rows
        return dict(rows)

    def check(self) -> dict[str, int]:
        return check_invariants(self.engine)   # ledger == balances, nothing held, usage matches


@contextmanager
def books_for(settings: Settings) -> Iterator[Books]:
    books = Books(settings)
    try:
        yield books
    finally:
        books.close()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The accounts tests' settings with the embedding cache off: here every request must reach a provider
    (cached tokens are billed apart; tests/accounts/test_cache_billing.py covers them)."""
    return settings.with_(cache="off")


def assert_charged(books: Books, response: httpx.Response, request_id: str, *, provider: str, price: float,
                   tokens: int, upstream_tokens: int | None, reserved_price: float, reserved_tokens: int) -> int:
    """One usage record naming ``provider`` at its price; the reservation was the bound, settled once."""
    assert response.status_code == 200, response.text
    assert response.headers["x-gigarouter-provider"] == provider
    assert response.json()["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens,
                                        "prompt_tokens_details": {"cached_tokens": 0}}
    charged = cost(tokens, price)
    assert tuple(books.usage(request_id)) == (provider, tokens, upstream_tokens, charged, 200)
    reserved = cost(reserved_tokens, reserved_price)
    assert books.entries(request_id) == {"reserve": -reserved, "settle": reserved - charged}
    return charged


# -- a gateway with a local deployment and two remote providers (in-process) --------------------------------------

@contextmanager
def local_gateway(settings: Settings, tmp_path: Path) -> Iterator[tuple[str, str, str, str]]:
    """(gateway, upstream, account id, key): local at LOCAL; `cheap` and `dear`, one upstream at CHEAP and DEAR."""
    account_id, key = account_with(settings, credit_micro=CREDIT)
    with upstream(tmp_path, "upstream") as up:
        local = ModelConfig(**{**default_model().__dict__, "price_per_million_usd": LOCAL})
        gateway = settings.with_(models=(local,), providers=(remote("cheap", up, CHEAP), remote("dear", up, DEAR)))
        with live_server(gateway, loader=fake_loader(FakeEngine())) as base:
            yield base, up, account_id, key


def test_each_request_is_charged_at_the_serving_providers_price(settings, tmp_path, minilm_recipe):
    ours = sum(len(item.token_ids) for item in minilm_recipe.prepare_texts(INPUT))
    assert ours == TOKENS
    with local_gateway(settings, tmp_path) as (base, _, account_id, key), books_for(settings) as books:
        before = books.balance(account_id)
        # (request, preferences, who serves, the dearest allowed price: what is reserved, upstream usage)
        served = [
            ("r-default", None, "cheap", DEAR, TOKENS),                                   # cheapest first
            ("r-dear", {"order": ["dear"]}, "dear", DEAR, TOKENS),
            ("r-local", {"order": ["local"]}, "local", DEAR, None),                       # no upstream usage
            ("r-no-cheap", {"sort": "price", "ignore": ["cheap"]}, "local", DEAR, None),
            ("r-only-dear", {"only": ["dear"], "allow_fallbacks": False}, "dear", DEAR, TOKENS),
            ("r-max-price", {"max_price": {"prompt": LOCAL}}, "cheap", LOCAL, TOKENS),     # dear excluded
            ("r-local-only", {"order": ["local"], "allow_fallbacks": False}, "local", LOCAL, None),
        ]
        prices = {"cheap": CHEAP, "dear": DEAR, "local": LOCAL}
        charged = 0
        for request_id, prefs, provider, bound, upstream_tokens in served:
            charged += assert_charged(books, embed(base, key, request_id, prefs), request_id, provider=provider,
                                      price=prices[provider], tokens=ours, upstream_tokens=upstream_tokens,
                                      reserved_price=bound, reserved_tokens=ours)
        assert charged == 2 * cost(TOKENS, CHEAP) + 2 * cost(TOKENS, DEAR) + 3 * cost(TOKENS, LOCAL)
        totals = books.check()
        assert totals["settled"] == len(served) and totals["refunded"] == 0 and totals["held"] == 0
        assert before - books.balance(account_id) == charged == totals["usage_cost"]

        usage = httpx.get(f"{base}/v1/usage", params={"group_by": "provider"},
                          headers={"authorization": f"Bearer {key}"}, timeout=30).json()
        assert usage["balance_micro"] == before - charged
        assert {row["group"]: (row["requests"], row["tokens"], row["cost_micro"]) for row in usage["data"]} == {
            "cheap": (2, 2 * TOKENS, 2 * cost(TOKENS, CHEAP)),
            "dear": (2, 2 * TOKENS, 2 * cost(TOKENS, DEAR)),
            "local": (3, 3 * TOKENS, 3 * cost(TOKENS, LOCAL)),
        }


def test_we_bill_our_own_count_and_record_the_upstreams_beside_it(settings, tmp_path):
    with local_gateway(settings, tmp_path) as (base, up, _, key), books_for(settings) as books:
        r = embed(base, key, "r-upstream", {"order": ["dear"]})
        assert r.status_code == 200, r.text
        # What the upstream itself reports for the same input (open mode: no key).
        theirs = httpx.post(f"{up}/v1/embeddings", json={"model": MODEL, "input": INPUT}, timeout=60)
        assert theirs.status_code == 200, theirs.text
        provider, tokens, upstream_tokens, _, _ = books.usage("r-upstream")
        assert (provider, tokens) == ("dear", r.json()["usage"]["prompt_tokens"]) == ("dear", TOKENS)
        assert upstream_tokens == theirs.json()["usage"]["prompt_tokens"]


def test_an_idempotent_retry_through_the_router_is_charged_once(settings, tmp_path):
    with local_gateway(settings, tmp_path) as (base, _, account_id, key), books_for(settings) as books:
        before = books.balance(account_id)
        first = embed(base, key, "r-idem-1", {"order": ["dear"]}, **{"idempotency-key": "once"})
        again = embed(base, key, "r-idem-2", {"order": ["dear"]}, **{"idempotency-key": "once"})
        assert first.status_code == again.status_code == 200, (first.text, again.text)
        assert "idempotent-replayed" not in first.headers and again.headers["idempotent-replayed"] == "true"
        assert again.content == first.content
        assert_charged(books, first, "r-idem-1", provider="dear", price=DEAR, tokens=TOKENS,
                       upstream_tokens=TOKENS, reserved_price=DEAR, reserved_tokens=TOKENS)
        assert books.rows("SELECT COUNT(*) FROM usage_records WHERE request_id = 'r-idem-2'")[0][0] == 0
        totals = books.check()
        assert totals["settled"] == 1 and totals["refunded"] == 0
        assert before - books.balance(account_id) == cost(TOKENS, DEAR)


@contextmanager
def misreporting(target: str, prompt_tokens: int | None) -> Iterator[str]:
    """A proxy to the upstream ``target`` that answers its vectors with ``prompt_tokens`` as the usage (None:
    without usage)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            r = httpx.post(f"{target}{self.path}", content=body, timeout=30,
                           headers={"content-type": "application/json"})
            content = r.content
            if r.status_code == 200:
                payload = r.json()
                payload.pop("usage")
                if prompt_tokens is not None:
                    payload["usage"] = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
                content = json.dumps(payload).encode()
            self.send_response(r.status_code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


REMOTE_ONLY = "minilm-remote"                    # a second route: the same upstream model, no local deployment


@pytest.mark.parametrize("reported", [7, -1, 2**40], ids=["low", "negative", "beyond-int32"])
def test_an_upstream_misreporting_usage_is_still_charged_once(settings, tmp_path, reported):
    """Our own count is billed where we have one; a usage that is no count (negative, or too large to be one)
    is not recorded and never fails the settlement."""
    recorded = reported if 0 <= reported < 2**31 else None
    account_id, key = account_with(settings, credit_micro=CREDIT)
    with upstream(tmp_path, "upstream") as up, misreporting(up, reported) as liar, books_for(settings) as books:
        local = ModelConfig(**{**default_model().__dict__, "price_per_million_usd": LOCAL})
        liar_config = ProviderConfig(name="liar", base_url=f"{liar}/v1", price_per_million_usd=DEAR,
                                     models=((MODEL, MODEL), (REMOTE_ONLY, MODEL)))
        gateway = settings.with_(models=(local,), providers=(liar_config,))
        with live_server(gateway, loader=fake_loader(FakeEngine())) as base:
            before = books.balance(account_id)
            charged = assert_charged(books, embed(base, key, "r-exact", {"order": ["liar"]}), "r-exact",
                                     provider="liar", price=DEAR, tokens=TOKENS, upstream_tokens=recorded,
                                     reserved_price=DEAR, reserved_tokens=TOKENS)
            # No tokenizer here: the upstream's count is billed, a huge one held to the reservation's bound, and a
            # negative one is no count (about four bytes a token).
            r = httpx.post(f"{base}/v1/embeddings", json={"model": REMOTE_ONLY, "input": INPUT}, timeout=60,
                           headers={"authorization": f"Bearer {key}", "x-request-id": "r-remote"})
            bound = sum(len(text.encode()) + 64 for text in INPUT)
            typical = sum(-(-len(text.encode()) // 4) + 2 for text in INPUT)
            charged += assert_charged(books, r, "r-remote", provider="liar", price=DEAR,
                                      tokens=typical if reported < 0 else min(reported, bound),
                                      upstream_tokens=recorded,
                                      reserved_price=DEAR, reserved_tokens=bound)
            totals = books.check()
            assert totals["settled"] == 2 and totals["refunded"] == 0
            assert before - books.balance(account_id) == charged


def test_token_ids_through_a_route_without_tokenizer_are_billed_as_the_upstream_counts_them(settings, tmp_path,
                                                                                           minilm_recipe):
    """The reservation's bound must hold the special tokens the upstream wraps token ids in, or it under-bills."""
    content = [item.token_ids[1:-1] for item in minilm_recipe.prepare_texts(INPUT)]   # without [CLS] ... [SEP]
    account_id, key = account_with(settings, credit_micro=CREDIT)
    with upstream(tmp_path, "upstream") as up, misreporting(up, None) as mute, books_for(settings) as books:
        gateway = settings.with_(models=(), providers=(remote("cheap", up, CHEAP), remote("mute", mute, DEAR)))
        with live_server(gateway) as base:
            before = books.balance(account_id)
            bound = sum(len(ids) + 64 for ids in content)
            charged = 0
            # `mute` reports no usage: token ids are counted (plus the two special tokens), not guessed.
            for request_id, provider, price, reported in (("r-ids", "cheap", CHEAP, TOKENS),
                                                          ("r-ids-mute", "mute", DEAR, None)):
                r = httpx.post(f"{base}/v1/embeddings", timeout=60,
                               json={"model": MODEL, "input": content, "provider": {"order": [provider]}},
                               headers={"authorization": f"Bearer {key}", "x-request-id": request_id})
                charged += assert_charged(books, r, request_id, provider=provider, price=price, tokens=TOKENS,
                                          upstream_tokens=reported, reserved_price=DEAR, reserved_tokens=bound)
            books.check()
            assert before - books.balance(account_id) == charged


# -- a pure gateway from TOML (subprocess) over two upstreams that die ------------------------------------------

GHOST = 3.0                                      # a provider that never answered: never served, never reserved at


def _gateway_config(settings: Settings, path: Path, *, cheap: str, dear: str) -> Path:
    lines = [f'database_url = "{settings.resolved_database_url}"', f'data_dir = "{settings.data_dir}"',
             f'server_secret = "{settings.server_secret}"', 'cache = "off"']
    ghost = f"http://127.0.0.1:{free_port()}"   # nothing listens there
    for name, base, price in (("cheap", cheap, CHEAP), ("dear", dear, DEAR), ("ghost", ghost, GHOST)):
        lines += ["[[providers]]", f'name = "{name}"', f'base_url = "{base}/v1"', f'models = ["{MODEL}"]',
                  f"price_per_million_usd = {price}"]
    path.write_text("\n".join(lines) + "\n")
    return path


@contextmanager
def gateway_process(config: Path) -> Iterator[str]:
    port = free_port()
    log = config.parent / f"gateway-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gigarouter.cli", "serve", "--port", str(port),
                                 "--config", str(config), "--log-level", "warning"],
                                stdout=out, stderr=subprocess.STDOUT, env=worker_env())
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_ready(base, timeout=60, alive=lambda: proc.poll() is None)
        except AssertionError:
            raise AssertionError(log.read_text()) from None
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_failover_is_charged_once_and_total_failure_is_refunded(settings, tmp_path):
    account_id, key = account_with(settings, credit_micro=CREDIT)
    # The gateway holds no tokenizer: it reserves an upper bound on the tokens (UTF-8 bytes plus room for
    # special tokens, per input) at the dearest price, and bills the upstream's reported count.
    bound = sum(len(text.encode()) + 64 for text in INPUT)
    with ExitStack() as cheap_up, ExitStack() as dear_up, books_for(settings) as books:
        cheap = cheap_up.enter_context(upstream(tmp_path, "cheap"))
        dear = dear_up.enter_context(upstream(tmp_path, "dear"))
        config = _gateway_config(settings, tmp_path / "gateway.toml", cheap=cheap, dear=dear)
        with gateway_process(config) as base:
            before = books.balance(account_id)
            charged = assert_charged(books, embed(base, key, "r-default"), "r-default", provider="cheap",
                                     price=CHEAP, tokens=TOKENS, upstream_tokens=TOKENS, reserved_price=DEAR,
                                     reserved_tokens=bound)
            charged += assert_charged(books, embed(base, key, "r-dear", {"order": ["dear"]}), "r-dear",
                                      provider="dear", price=DEAR, tokens=TOKENS, upstream_tokens=TOKENS,
                                      reserved_price=DEAR, reserved_tokens=bound)
            # `ghost` never passed a probe: it is down, skipped even when asked for first, and its price is
            # not the bound (only the providers that may serve are).
            charged += assert_charged(books, embed(base, key, "r-ghost", {"order": ["ghost"]}), "r-ghost",
                                      provider="cheap", price=CHEAP, tokens=TOKENS, upstream_tokens=TOKENS,
                                      reserved_price=DEAR, reserved_tokens=bound)
            r = embed(base, key, "r-ghost-only", {"order": ["ghost"], "allow_fallbacks": False})
            assert r.status_code == 503 and r.json()["error"]["code"] == "no_provider_available", r.text
            assert not books.rows("SELECT id FROM reservations WHERE request_id = 'r-ghost-only'")  # never reserved

            dear_up.close()   # `dear` passed its probes, so it is still first in order; it now refuses connections
            r = embed(base, key, "r-failover", {"order": ["dear"]})
            charged += assert_charged(books, r, "r-failover", provider="cheap", price=CHEAP, tokens=TOKENS,
                                      upstream_tokens=TOKENS, reserved_price=DEAR, reserved_tokens=bound)
            assert before - books.balance(account_id) == charged
            assert books.rows("SELECT COUNT(*) FROM reservations WHERE request_id = 'r-failover'")[0][0] == 1

            cheap_up.close()  # every provider is dead now
            after = books.balance(account_id)
            dear_failures = 1                  # r-failover; breaker_failures (3) in a row take it out of plans
            for request_id in ("r-dead", "r-dead-1", "r-dead-2"):
                key_header = {} if request_id == "r-dead" else {"idempotency-key": "dead"}
                r = embed(base, key, request_id, {"order": ["dear"]}, **key_header)
                assert r.status_code == 503, r.text
                assert "idempotent-replayed" not in r.headers   # a failure is not stored: the retry runs again
                error = r.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}
                assert (error["type"], error["code"]) == ("server_error", "provider_unavailable"), error
                tried = ("cheap", "dear") if dear_failures < Settings().breaker_failures else ("cheap",)
                dear_failures += "dear" in tried
                assert all(name in error["message"] for name in tried), error
                assert int(r.headers["retry-after"]) >= 1
                assert tuple(books.usage(request_id)) == (None, bound, None, 0, 503)
                reserved = cost(bound, DEAR if "dear" in tried else CHEAP)   # the dearest provider in the plan
                assert books.entries(request_id) == {"reserve": -reserved, "refund": reserved}
                assert books.balance(account_id) == after

            totals = books.check()
            assert totals["settled"] == 4 and totals["refunded"] == 3 and totals["held"] == 0
            assert before - books.balance(account_id) == charged == totals["usage_cost"]
            assert charged == 3 * cost(TOKENS, CHEAP) + cost(TOKENS, DEAR)
