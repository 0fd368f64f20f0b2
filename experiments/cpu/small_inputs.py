"""What short inputs cost and keep on a CPU: the numbers behind SMALL_PASS_TOKENS and section 13's
"short inputs" paragraph (docs/benchmarks.md).

    python experiments/cpu/small_inputs.py threads       # one pass by size, on 1 and 2 threads
    python experiments/cpu/small_inputs.py fidelity      # short inputs vs sentence-transformers fp32
    python experiments/cpu/small_inputs.py bits          # probe vectors on 1 vs 2 threads, ATen vs oneDNN
    python experiments/cpu/small_inputs.py profile       # where a pass's time goes, by op (torch profiler)

``threads`` times ``engine._forward`` (no scheduler) for passes of 10 to 1,024 tokens with torch set
to 1 and to 2 threads. ``fidelity`` embeds 25 one-to-three-word inputs and 600 corpus texts under
``bfloat16-mixed`` with each kernel set. ``bits`` loads the model in a fresh process per
(threads, kernels, precision), with OMP_NUM_THREADS set, embeds the router's fingerprint probes
one text per pass as the router does (small passes: one thread either way, SMALL_PASS_TOKENS)
and 64 corpus texts (passes over it: 1 or 2 threads), and compares the vectors and the probes'
fingerprints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

SHORT = ["?", "a", "x", "hi", "ok", "no", "yes", "the", "llama", "Paris", "?!", "1", "42", "é", "🦙", "hello world",
         "what?", "why not", "café", "a b", "Zürich", "東京", "...", "-", "the end"]


def embedder(dtype: str):
    from gigarouter.embedder import Embedder
    from gigarouter.settings import Settings, default_model

    return Embedder(dataclasses.replace(default_model(), dtype=dtype), settings=Settings(cache="off"))


def threads() -> None:
    import torch

    from gigarouter.engine.base import pack

    for dtype in ("bfloat16-mixed", "float32"):
        with embedder(dtype) as e:
            for tokens, seqs in ((10, 1), (40, 1), (120, 1), (256, 2), (512, 4), (1024, 16)):
                batch = pack([[101] + [2000 + i for i in range(tokens // seqs - 2)] + [102]] * seqs)
                ms = {}
                for n in (1, 2):
                    torch.set_num_threads(n)
                    with torch.inference_mode():
                        for _ in range(5):
                            e.engine._forward(batch).cpu()
                        samples = []
                        for _ in range(30):
                            t = time.perf_counter()
                            e.engine._forward(batch).cpu()
                            samples.append((time.perf_counter() - t) * 1e3)
                    ms[n] = statistics.median(samples)
                print(f"{dtype}: {tokens} tokens in {seqs} sequence(s): "
                      f"1 thread {ms[1]:.2f} ms, 2 threads {ms[2]:.2f} ms")


def fidelity() -> None:
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from gigarouter.bench.corpus import mixed_corpus
    from gigarouter.engine.sources import embedded_model_dir

    texts = SHORT + list(mixed_corpus(600).texts)
    reference = SentenceTransformer(str(embedded_model_dir()), device="cpu").encode(texts, normalize_embeddings=True)
    for kernels in ("aten", "onednn"):
        os.environ["GIGAROUTER_CPU_LINEAR"] = kernels
        for dtype in ("float32", "bfloat16-mixed"):
            with embedder(dtype) as e:
                cos = np.sum(e.encode(texts) * reference, axis=1)
            worst = int(np.argmin(cos[:len(SHORT)]))
            print(f"{kernels} {dtype}: short min {cos[:len(SHORT)].min():.7f} ({SHORT[worst]!r}), "
                  f"{int((cos[:len(SHORT)] < 0.99997).sum())}/{len(SHORT)} under 0.99997; "
                  f"corpus min {cos[len(SHORT):].min():.7f}, {int((cos[len(SHORT):] < 0.99997).sum())}/600 under")


def bits_child(dtype: str) -> None:
    import numpy as np

    from gigarouter.bench.corpus import mixed_corpus
    from gigarouter.router.fingerprints import PROBES, fingerprint

    with embedder(dtype) as e:
        # one text per pass, as the router probes (router._probe)
        vectors = [np.concatenate([e.encode([t], input_type=p.input_type, instruction=p.instruction) for t in p.texts])
                   for p in PROBES]
        corpus = e.encode(list(mixed_corpus(64).texts))     # passes over SMALL_PASS_TOKENS: all threads
    print(json.dumps({"fingerprint": fingerprint(vectors), "probes": np.concatenate(vectors).tolist(),
                      "corpus": corpus.tolist()}))


def bits() -> None:
    import numpy as np

    for kernels in ("aten", "onednn"):
        for dtype in ("float32", "bfloat16-mixed"):
            got = {}
            for n in (1, 2):
                env = {**os.environ, "GIGAROUTER_CPU_LINEAR": kernels, "OMP_NUM_THREADS": str(n)}
                out = subprocess.run([sys.executable, __file__, "bits-child", dtype], env=env, capture_output=True,
                                     text=True, check=True)
                got[n] = json.loads(out.stdout.strip().splitlines()[-1])
            diff = {k: float(np.abs(np.array(got[1][k]) - np.array(got[2][k])).max()) for k in ("probes", "corpus")}
            print(f"{kernels} {dtype}: 1 vs 2 threads max |diff| probes {diff['probes']:.2g}, 64 corpus texts "
                  f"{diff['corpus']:.2g}; fingerprints {got[1]['fingerprint']} / {got[2]['fingerprint']}")


def profile() -> None:
    """Op shares under bfloat16-mixed: 600 corpus texts in 1,024-token batches on all threads, and
    a 10-token query on one thread (engine only: no scheduler, no tokenization in the timing)."""
    import torch
    from _common import sorted_batches
    from torch.profiler import profile as torch_profile

    from gigarouter.bench.corpus import mixed_corpus
    from gigarouter.engine.base import pack

    with embedder("bfloat16-mixed") as e:
        items = e.recipe.prepare_texts(list(mixed_corpus(600).texts), input_type="document", instruction=None,
                                       truncate="end")
        work = sorted_batches([it.token_ids for it in items])
        query = pack([[101, 2054, 2003, 1996, 3007, 1997, 2605, 1998, 2339, 102]])
        for label, batches, threads in (("600 texts, 1,024-token batches, 2 threads", work, 2),
                                        ("one 10-token query, 1 thread", [query] * 20, 1)):
            torch.set_num_threads(threads)
            with torch.inference_mode():
                for b in batches[:3]:
                    e.engine._forward(b).cpu()
                with torch_profile() as prof:
                    for b in batches:
                        e.engine._forward(b).cpu()
            rows = sorted(prof.key_averages(), key=lambda r: -r.self_cpu_time_total)
            total = sum(r.self_cpu_time_total for r in rows)
            print(f"{label}:")
            for r in rows[:5]:
                print(f"  {r.key:<55} {100 * r.self_cpu_time_total / total:5.1f}%  "
                      f"{r.self_cpu_time_total / r.count:8.1f} us/call  {r.count} calls")


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "threads"
    {"threads": threads, "fidelity": fidelity, "bits": bits, "profile": profile,
     "bits-child": lambda: bits_child(sys.argv[2])}[command]()
