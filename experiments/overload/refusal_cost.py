"""What one 429 costs the server: server CPU per refused request, refused at the door (api/shedding.py)
or in the handler (after FastAPI's routing and dependencies), driven by wrk with bench/flood.lua.

Each variant is a server whose model always refuses (a fake engine; the scheduler's admission check
patched to say "full"), started in its own process; wrk sends for ``--seconds`` over ``--connections``
connections and the server's CPU time (utime + stime from /proc) is divided by the answers.

    python experiments/overload/refusal_cost.py --out docs/benchmarks/refusal-cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

SERVER = r'''
import sys
from pathlib import Path
import uvicorn
from gigarouter.api.app import create_app
from gigarouter.errors import QueueFull
from gigarouter.router.router import Router
from gigarouter.scheduler.queue import Scheduler
from gigarouter.settings import Settings
from tests.conftest import FakeEngine, fake_loader

variant, port, data = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
loader = fake_loader(FakeEngine())
app = create_app(Settings(data_dir=data, cache="off"), loader=loader)
if variant == "handler":   # the door lets everything through: the handler's early check refuses
    Router.saturated = lambda self, tokens: None
original = Scheduler.admission_error

def full(self, tokens, *, max_wait_s=None):
    # The probes at start-up go through; once ready, every request is refused.
    if getattr(app.state, "router", None) is not None and app.state.router.ready:
        return QueueFull("full", retry_after=1.0)
    return original(self, tokens, max_wait_s=max_wait_s)

Scheduler.admission_error = full
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
'''


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(variant: str, *, port: int, connections: int, seconds: int, work: Path) -> dict:
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{repo / 'src'}:{repo}"}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, variant, str(port), str(work / variant)], env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        bodies = work / "bodies.jsonl"
        bodies.write_text("".join(json.dumps({"model": "all-minilm-l6-v2", "input": f"what is query {i}"}) + "\n"
                                  for i in range(100)))
        out = work / f"{variant}.json"
        before = cpu_seconds(proc.pid)
        subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout=30s", "-s",
                        str(repo / "src/gigarouter/bench/flood.lua"), url], check=True, capture_output=True,
                       env={**os.environ, "FLOOD_BODIES": str(bodies), "FLOOD_OUT": str(out)})
        used = cpu_seconds(proc.pid) - before
        run = json.loads(out.read_text())
        answers = sum(run["statuses"].values())
        return {"variant": variant, "statuses": run["statuses"], "answers_per_s": round(answers / run["duration_s"]),
                "server_cpu_ms_per_answer": round(1000 * used / answers, 3),
                "refusals_without_retry_after": run["refusals_without_retry_after"]}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--port", type=int, default=18611)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="refusal-cost-"))
    rows = [measure(v, port=args.port, connections=args.connections, seconds=args.seconds, work=work)
            for v in ("door", "handler", "door", "handler")]
    for row in rows:
        print(row)
    result = {"command": "python " + " ".join(sys.argv), "load_average": os.getloadavg(), "runs": rows,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
