"""``gigarouter serve`` as a pure gateway (only ``[[providers]]``), in its own process.

It must start in seconds without torch, and the upstream key it reads from its
environment must reach the upstream and nothing else: not the client's errors,
/metrics, /v1/models, /ready, nor its logs (kept at debug level here), even when
the upstream echoes the key back in its error message.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.router.helpers import (
    MODEL,
    assert_openai_error,
    child_env,
    embed,
    serve,
    served_by,
    stop,
    wait_served,
    wait_state,
)
from tests.router.upstream import Upstream, upstreams

SECRET = f"sk-upstream-{uuid.uuid4().hex}"
KEY_ENV = "GR_E2E_UPSTREAM_KEY"
READY_WITHIN_S = 30.0        # generous for a shared CI machine; torch alone takes longer to load a model


def _config(path: Path, data_dir: Path, keyed: Upstream, spare: Upstream) -> Path:
    path.write_text(f"""
data_dir = "{data_dir}"
cache = "off"
breaker_failures = 2
breaker_cooldown_s = 0.5

[[providers]]
name = "keyed"
base_url = "{keyed.url}/v1"
api_key_env = "{KEY_ENV}"
models = {{ "{MODEL}" = "{MODEL}" }}
price_per_million_usd = 0.01
timeout_s = 5

[[providers]]
name = "spare"
base_url = "{spare.url}/v1"
models = ["{MODEL}"]
price_per_million_usd = 0.02
""")
    return path


@pytest.fixture(scope="module")
def ups(backend: str, tmp_path_factory) -> Iterator[dict[str, Upstream]]:
    with upstreams(backend, {"keyed": {}, "spare": {}}, log_dir=tmp_path_factory.mktemp("upstreams")) as started:
        yield started


@pytest.fixture(scope="module")
def config(ups, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("gateway")
    return _config(tmp / "gateway.toml", tmp / "data", ups["keyed"], ups["spare"])


@pytest.fixture(scope="module")
def served(config: Path) -> Iterator[tuple[str, subprocess.Popen, float]]:
    port = free_port()
    started = time.monotonic()
    proc = serve(["--port", str(port), "--config", str(config), "--log-level", "debug"],
                 log=config.parent / "gateway.log", env=child_env(**{KEY_ENV: SECRET}))
    try:
        base = wait_served(proc, port, timeout=60)
        yield base, proc, time.monotonic() - started
    finally:
        stop(proc)


def test_a_pure_gateway_is_ready_quickly_without_torch(served):
    base, proc, seconds = served
    assert seconds < READY_WITHIN_S, f"ready after {seconds:.1f} s"
    maps = Path(f"/proc/{proc.pid}/maps")
    if maps.exists():    # Linux: no torch library mapped into the serving process
        assert "libtorch" not in maps.read_text()
    ready = httpx.get(f"{base}/ready", timeout=5).json()
    assert ready["providers"] == {MODEL: {"keyed": "healthy", "spare": "healthy"}}
    assert served_by(embed(base)) == "keyed"


def test_building_and_starting_the_gateway_app_never_imports_torch(config):
    script = """
import asyncio, sys
from gigarouter.api.app import create_app
from gigarouter.settings import load_settings

app = create_app(load_settings(sys.argv[1]))

async def main():
    async with app.router.lifespan_context(app):
        for _ in range(600):
            if app.state.router.ready:
                break
            await asyncio.sleep(0.05)
        assert app.state.router.ready, "the gateway did not probe its providers"

asyncio.run(main())
assert "torch" not in sys.modules, "torch was imported"
print("no torch")
"""
    out = subprocess.run([sys.executable, "-c", script, str(config)], env=child_env(**{KEY_ENV: SECRET}),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "no torch" in out.stdout, out.stderr[-3000:]


def test_the_upstream_key_reaches_the_upstream_and_nothing_else(served, ups, config):
    base, proc, _ = served
    keyed, spare = ups["keyed"], ups["spare"]
    seen: list[str] = []
    try:
        keyed.control("500")           # its error message quotes the Authorization header it got
        r = embed(base, provider={"only": ["keyed"]})
        assert "injected failure" in assert_openai_error(r, 503)["message"]    # the upstream's words, passed on
        seen.append(r.text + str(r.headers))
        r = embed(base, provider={"order": ["keyed"], "allow_fallbacks": False})
        assert_openai_error(r, 503)
        seen.append(r.text + str(r.headers))
        r = embed(base)
        assert served_by(r) == "spare"
        seen.append(str(r.headers))
        for mode in ("429", "reset"):
            keyed.control(mode)
            seen.append(embed(base, provider={"only": ["keyed"]}).text)
        for path in ("/metrics", "/v1/models", f"/v1/models/{MODEL}", "/ready", "/health"):
            seen.append(httpx.get(f"{base}{path}", timeout=10).text)
    finally:
        keyed.control("ok")
    wait_state(base, "keyed", "healthy")
    assert served_by(embed(base)) == "keyed"

    assert f"Bearer {SECRET}" in keyed.stats()["authorizations"]     # the key did go where it belongs
    assert spare.stats()["authorizations"] == []                     # and only there
    for text in seen:
        assert SECRET not in text and SECRET[-12:] not in text
    log = (config.parent / "gateway.log").read_text()
    assert "injected failure" in log                # the upstream's failures were logged ...
    assert SECRET not in log and SECRET[-12:] not in log   # ... without the key
