"""The OpenVINO peer of issue 18: sentence-transformers' OpenVINO backend, served or driven offline.

It runs in a virtual environment of its own (never gigarouter's; it imports nothing of ours),
made as docs/benchmarks.md, section 13, says:

    python openvino_peer.py serve --model-dir DIR --port 17998 [--precision default|f32]
    python openvino_peer.py worker --model-dir DIR [--precision default|f32]

``serve``: the 20-line FastAPI wrapper, an OpenAI-shaped ``POST /v1/embeddings`` and
``GET /health``. One ``encode`` at a time (optimum's OpenVINO model holds one infer request),
batch size 32, as sentence-transformers' own default.
``worker``: the offline side of ``gigarouter bench cpu-precision``: JSON commands on stdin,
one JSON answer per line on stdout, so the driver can interleave it with the other engines.

``--precision default`` leaves OpenVINO's CPU plugin to choose (bf16 on CPUs with AMX or
AVX-512-BF16, f32 elsewhere); ``f32`` sets ``INFERENCE_PRECISION_HINT = f32``. The model is
exported to OpenVINO IR once, into ``--export-dir``, and read from there afterwards.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path


def load(model_dir: Path, export_dir: Path, precision: str):
    from sentence_transformers import SentenceTransformer

    if not (export_dir / "openvino").exists():
        SentenceTransformer(str(model_dir), backend="openvino", device="cpu").save_pretrained(str(export_dir))
    ov_config = {} if precision == "default" else {"INFERENCE_PRECISION_HINT": precision}
    model = SentenceTransformer(str(export_dir), backend="openvino", device="cpu",
                                model_kwargs={"ov_config": ov_config} if ov_config else None)
    compiled = model[0].auto_model.request
    hint = compiled.get_property("INFERENCE_PRECISION_HINT") if compiled is not None else None
    ran = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
    return model, ran


def serve(model, ran: str, port: int, name: str) -> None:
    import uvicorn
    from fastapi import FastAPI

    app, lock = FastAPI(), threading.Lock()

    @app.get("/health")
    def health() -> dict:
        return {"precision": ran}

    @app.post("/v1/embeddings")
    def embeddings(body: dict) -> dict:
        texts = [body["input"]] if isinstance(body["input"], str) else list(body["input"])
        with lock:
            vectors = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
        return {"object": "list", "model": name, "usage": {"prompt_tokens": 0, "total_tokens": 0},
                "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def worker(model, ran: str) -> None:
    """Commands: {"texts": path} loads a JSON list; {"encode": true} times one encode of them all;
    {"vectors": n, "out": path} saves the first n vectors (.npy); {"quit": true}."""
    import numpy as np

    texts: list[str] = []
    print(json.dumps({"ready": True, "precision": ran}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if "texts" in cmd:
            texts = json.loads(Path(cmd["texts"]).read_text())
            model.encode(texts[:64], batch_size=32)       # warm-up
            answer: dict = {"loaded": len(texts)}
        elif "encode" in cmd:
            t0 = time.perf_counter()
            model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
            answer = {"seconds": time.perf_counter() - t0}
        elif "vectors" in cmd:
            np.save(cmd["out"], model.encode(texts[:cmd["vectors"]], batch_size=32, normalize_embeddings=True,
                                             convert_to_numpy=True))
            answer = {"saved": cmd["out"]}
        else:
            return
        print(json.dumps(answer), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("serve", "worker"))
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--export-dir", type=Path, default=Path("/tmp/gigarouter-openvino-export"))
    parser.add_argument("--precision", choices=("default", "f32", "bf16"), default="default")
    parser.add_argument("--port", type=int, default=17998)
    parser.add_argument("--served-model-name", default="all-minilm-l6-v2")
    args = parser.parse_args()
    model, ran = load(args.model_dir, args.export_dir, args.precision)
    print(f"openvino peer: {args.precision} -> inference precision {ran}", file=sys.stderr, flush=True)
    if args.mode == "serve":
        serve(model, ran, args.port, args.served_model_name)
    else:
        worker(model, ran)


if __name__ == "__main__":
    main()
