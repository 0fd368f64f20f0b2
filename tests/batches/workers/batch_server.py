"""A server with accounts on and a slow fake engine that logs what it computes; test_crash.py SIGKILLs it.

    python batch_server.py DATABASE_URL DATA_DIR SERVER_SECRET PORT COMPUTE_LOG

Each sequence the engine computes is appended to COMPUTE_LOG (its token ids, one line) after it is
computed, so the test can tell which batch lines each run of the server computed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import uvicorn

from gigarouter.api.app import create_app
from gigarouter.engine.base import PackedBatch
from gigarouter.settings import Settings
from tests.batches.helpers import priced_model
from tests.conftest import FakeEngine, fake_loader


class LoggingEngine(FakeEngine):
    def __init__(self, log: Path) -> None:
        super().__init__()
        self.log = open(log, "a", buffering=1)   # open for the process's life

    def embed(self, batch: PackedBatch, *, concurrent: bool = False):
        time.sleep(0.01)          # slow enough that a batch is surely killed in the middle
        vectors = super().embed(batch, concurrent=concurrent)
        for i in range(batch.num_sequences):
            ids = batch.input_ids[batch.cu_seqlens[i]:batch.cu_seqlens[i + 1]]
            self.log.write(" ".join(str(t) for t in ids.tolist()) + "\n")
        return vectors


def main(url: str, data_dir: str, secret: str, port: str, log: str) -> None:
    settings = Settings(database_url=url, data_dir=Path(data_dir), server_secret=secret, auth="required",
                        port=int(port), models=(priced_model(),), cache="off", batch_concurrency=2)
    app = create_app(settings, loader=fake_loader(LoggingEngine(Path(log))))
    uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="warning")


if __name__ == "__main__":
    main(*sys.argv[1:])
