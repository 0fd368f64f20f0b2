"""An upstream SIGKILLed under concurrent load costs the client nothing; restarted, it is back by itself."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import free_port
from tests.router.helpers import embed, gateway, provider, same_vectors, served_by, states, vectors, wait_state
from tests.router.upstream import Upstream, upstreams

CLIENTS = 8
MAX_REQUESTS = 400          # the whole test never sends more than this
BEFORE_KILL = 24            # answers from the victim before it is killed
AFTER_KILL = 48             # answers after it, all from the backup
TEXT = "the llama survived the kill"


@pytest.fixture(scope="module")
def ups(backend: str, tmp_path_factory) -> Iterator[dict[str, Upstream]]:
    with upstreams(backend, {"victim": {}, "backup": {}}, log_dir=tmp_path_factory.mktemp("upstreams")) as started:
        yield started


def test_sigkill_under_load_then_restart(ups, backend):
    victim, backup = ups["victim"], ups["backup"]
    reference = vectors(embed(backend, TEXT))
    providers = [provider("victim", victim, 0.01), provider("backup", backup, 0.02)]
    with gateway(providers, breaker_failures=3, breaker_cooldown_s=0.5) as gw:
        results: list[tuple[int, str | None, bool]] = []      # status, provider, same vectors
        failures: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(timeout=30) as http:
                while not stop.is_set():
                    with lock:
                        if len(results) + len(failures) >= MAX_REQUESTS:
                            return
                    try:
                        r = embed(gw, TEXT, client=http)
                    except httpx.HTTPError as exc:
                        with lock:
                            failures.append(repr(exc))
                        continue
                    ok = r.status_code == 200 and same_vectors(vectors(r), reference)
                    with lock:
                        results.append((r.status_code, r.headers.get("x-gigarouter-provider"), ok))
                        if r.status_code != 200:
                            failures.append(r.text)

        def served(name: str) -> int:
            with lock:
                return sum(p == name for _, p, _ in results)

        workers = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for w in workers:
            w.start()
        try:
            _wait(lambda: served("victim") >= BEFORE_KILL or failures, "the victim to serve")
            victim.kill()
            killed_at = len(results)
            _wait(lambda: len(results) - killed_at >= AFTER_KILL or failures, "the backup to take over")
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=60)

        assert not failures, failures[:3]
        assert all(status == 200 and ok for status, _, ok in results)
        assert len(results) <= MAX_REQUESTS
        assert all(p == "backup" for _, p, _ in results[killed_at + CLIENTS:])   # past the in-flight ones
        assert states(gw)["victim"] == "down"

        victim.start()               # same port; nobody tells the gateway
        wait_state(gw, "victim", "healthy", timeout=60)
        r = embed(gw, TEXT)
        assert r.headers["x-gigarouter-provider"] == "victim" and same_vectors(vectors(r), reference)


def _wait(done, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_requests_failing_together_do_not_stretch_the_breaker_cooldown(ups):
    """Many requests in flight when an upstream dies all fail at once; that is one outage, not many
    failed half-open probes: the provider is probed again after about the base cooldown."""
    victim, backup = ups["victim"], ups["backup"]
    if victim.proc is None or victim.proc.poll() is not None:
        victim.start()
    victim.control("slow", delay_s=1.0)        # hold every request in the victim until it dies
    providers = [provider("victim", victim, 0.01), provider("backup", backup, 0.02)]
    with gateway(providers, breaker_failures=3, breaker_cooldown_s=0.5) as gw:
        before = victim.stats()["requests"]
        done: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda: done.append(embed(gw, TEXT))) for _ in range(2 * CLIENTS)]
        for t in threads:
            t.start()
        _wait(lambda: victim.stats()["requests"] - before >= 2 * CLIENTS, "every request to reach the victim")
        victim.kill()
        for t in threads:
            t.join(timeout=60)
        assert len(done) == 2 * CLIENTS and all(served_by(r) == "backup" for r in done)
        assert states(gw)["victim"] == "down"

        victim.start()
        restarted = time.monotonic()
        wait_state(gw, "victim", "healthy", timeout=30)
        # A half-open probe every tick (1 s) once the cooldown is over; the cooldown doubles only
        # when such a probe fails (a couple of times while the victim restarts), not per request.
        assert time.monotonic() - restarted < 10


def test_a_provider_down_at_start_does_not_hold_the_gateway_back_and_joins_when_up(ups, backend):
    late = Upstream(backend, port=free_port(), log_dir=ups["backup"].log.parent)   # nothing listens there yet
    providers = [provider("late", late, 0.01), provider("backup", ups["backup"], 0.02)]
    try:
        with gateway(providers, breaker_failures=3, breaker_cooldown_s=0.5) as gw:     # ready without it
            assert states(gw) == {"late": "down", "backup": "healthy"}
            assert served_by(embed(gw)) == "backup"
            late.start()
            wait_state(gw, "late", "healthy", timeout=30)
            r = embed(gw, TEXT)
            assert served_by(r) == "late" and same_vectors(vectors(r), vectors(embed(backend, TEXT)))
    finally:
        late.stop()
