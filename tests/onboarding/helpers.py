"""A worker process holding an onboarding run, as a `gigarouter onboard` mid-run would (tests/onboarding, tests/web)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from gigarouter.accounts.db import is_sqlite
from gigarouter.accounts.recovery import LOCK_CLASS
from tests.accounts.helpers import worker_env

WORKER = Path(__file__).parent / "workers" / "run_holder.py"


class Holder:
    """A worker process holding one running run of ``model``."""

    def __init__(self, url: str, model: str) -> None:
        self.url = url
        self.proc = subprocess.Popen([sys.executable, str(WORKER), url, model], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=worker_env())
        line = self.proc.stdout.readline().split()
        assert len(line) == 2, self.proc.stderr.read()
        self.run_id, self.owner = line[0], int(line[1])

    def kill(self) -> None:
        """SIGKILL it, and return once its liveness lock is gone: at once for an flock (the kernel
        drops it with the process), a moment later for Postgres (the server notices the session end)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=30)        # reaps it and closes the pipes
        if is_sqlite(self.url):
            return
        engine = sa.create_engine(self.url, poolclass=sa.NullPool)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with engine.connect() as conn:
                    held = conn.execute(sa.text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                        "AND classid = :c AND objid = :o"), {"c": LOCK_CLASS, "o": self.owner}).scalar_one()
                if not held:
                    return
                time.sleep(0.02)
            raise AssertionError(f"Postgres kept the dead worker's liveness lock {self.owner} for 30 s")
        finally:
            engine.dispose()

    def finish(self) -> str:
        out, _ = self.proc.communicate("finish\n", timeout=60)
        return out.strip()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)
