"""A process that starts an onboarding run and holds it, as a `gigarouter onboard` mid-run would.

Prints the run's id and its liveness owner id, then waits for a line on stdin ("finish": finish
the run as passed and exit; end of input: exit without finishing, as a crashed CLI). The tests
SIGKILL it to play a dead one.

    python run_holder.py DATABASE_URL MODEL
"""

from __future__ import annotations

import sys

from gigarouter.accounts.db import make_engine
from gigarouter.onboarding.store import OnboardingStore, RunInProgress


def main(url: str, model: str) -> None:
    engine = make_engine(url, pool_size=1)
    store = OnboardingStore(engine)
    try:
        run = store.start(model, provider="in-process", commit=None, device="cpu", versions={})
    except RunInProgress:
        print("in-progress", flush=True)
        return
    store.report(run.id, step="quality", progress="quality: 1 of 3 tasks", results={"fidelity": {"passed": True}})
    print(run.id, store.liveness.owner, flush=True)
    if sys.stdin.readline().strip() == "finish":
        store.finish(run.id, results={"fidelity": {"passed": True}}, reason=None)
        print("finished", flush=True)
    store.close()
    engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
