"""Web sign-in attempts are limited across every gateway sharing a Redis, not per process.

Two apps here (two gates: what two gateway processes behind a balancer hold), one database, one
Redis key prefix. Each app's own in-process window would allow 10 attempts; together they
allow 10, the shared limit, whichever gateway each attempt reaches.
"""

from __future__ import annotations

import uuid
from contextlib import ExitStack

import pytest
from fastapi.testclient import TestClient

from gigarouter.accounts.limits import Limit, RedisLimiter
from gigarouter.accounts.service import DatabaseGate, GateOptions
from gigarouter.api.app import create_app
from gigarouter.settings import Settings
from tests.accounts.conftest import redis_url  # noqa: F401  (the fixture)
from tests.web.conftest import PASSWORD, csrf_of, new_email, sign_up

ATTEMPTS = 6        # the limit in this test (GateOptions.signin_limit; 10 by default)


def gateways(stack: ExitStack, settings: Settings, limiter_of) -> list[TestClient]:
    clients = []
    for _ in range(2):
        gate = DatabaseGate.from_settings(settings, limiter=limiter_of(), options=GateOptions(
            signin_limit=Limit(requests=ATTEMPTS, period_s=300.0), signup_limit=Limit(requests=1000)))
        clients.append(stack.enter_context(TestClient(create_app(settings, gate=gate), base_url="http://127.0.0.1",
                                                           follow_redirects=False)))
    return clients


def attempt(client: TestClient, email: str, password: str) -> int:
    token = csrf_of(client.get("/signin").text)
    return client.post("/signin", data={"email": email, "password": password, "csrf_token": token}).status_code


@pytest.mark.redis
def test_wrong_passwords_spread_over_two_gateways_meet_one_shared_limit(redis_url, tmp_path):  # noqa: F811
    prefix = f"gr-test-{uuid.uuid4().hex}"      # this test's own keys in the shared Redis
    settings = Settings(data_dir=tmp_path, models=(), server_secret="signin-limit-test", auth="required",
                        redis_url=redis_url)
    with ExitStack() as stack:
        a, b = gateways(stack, settings, lambda: RedisLimiter.from_url(redis_url, prefix=prefix))
        email, _ = sign_up(a)
        a.cookies.clear()                        # signed out: /signin shows its form again
        statuses = [attempt((a, b)[i % 2], email, "wrong password") for i in range(ATTEMPTS)]
        assert statuses == [400] * ATTEMPTS                      # the form again, "do not match"
        refused = [attempt(a, email, "wrong password"), attempt(b, email, PASSWORD)]
        assert refused == [429, 429]            # each gateway saw only half, yet both refuse
        assert attempt(b, new_email(), "wrong password") == 429   # the address is over its limit too


def test_without_redis_each_gateway_keeps_its_own_window(tmp_path):
    """What the shared limit replaces: one process's window sees only its own attempts."""
    settings = Settings(data_dir=tmp_path, models=(), server_secret="signin-limit-test", auth="required")
    with ExitStack() as stack:
        a, b = gateways(stack, settings, lambda: None)
        email, _ = sign_up(a)
        a.cookies.clear()                        # signed out: /signin shows its form again
        statuses = [attempt((a, b)[i % 2], email, "wrong password") for i in range(ATTEMPTS + 2)]
        assert statuses == [400] * (ATTEMPTS + 2)              # 4 + 4 attempts: under each one's 6
        assert attempt(b, email, PASSWORD) == 303                # signed in
