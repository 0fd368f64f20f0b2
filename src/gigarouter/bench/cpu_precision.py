"""Issue 18's table, re-measured: gigarouter in each precision against sentence-transformers on
torch and on OpenVINO (its default precision and f32), offline, interleaved, plus the bf16 and
fp32 matmul peaks of the same run.

    gigarouter bench cpu-precision --openvino-python /work/ov-venv/bin/python --out docs/benchmarks/cpu-precision.json

Every engine encodes the same texts (the first ``texts`` of the bench corpus, tokenization
included, vectors normalised) once per round; rounds alternate the order, and the table gives
the median inputs/s. Fidelity: the first ``fidelity_texts`` vectors of each engine against
sentence-transformers on torch in float32 (min and mean cosine). The OpenVINO engines run in
their own virtual environment (``openvino_peer.py worker``), driven line by line from here.

On a CPU without native bf16 (no ``amx_bf16`` / ``avx512_bf16``) torch's bf16 GEMM is an
emulation at ~0.5 GFLOP/s (AMD EPYC Zen 3: 200x slower than fp32); timing it says nothing
about the precision and embedding 1,500 texts with it takes most of an hour, so there the
bf16 rows are left out (their fidelity: ``experiments/cpu/mixed_precision_fidelity.py``) and the
bf16 peak is sampled on a small GEMM only, unless ``time_emulated_bf16``.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gigarouter.bench.corpus import mixed_corpus
from gigarouter.bench.machine import machine_info, matmul_rate
from gigarouter.engine.precision import choose_precision, cpu_flags

PEER_SCRIPT = Path(__file__).with_name("openvino_peer.py")


class OpenVinoWorker:
    """``openvino_peer.py worker`` in its own venv: one JSON command per line, one answer per line."""

    def __init__(self, python: Path, *, model_dir: Path, precision: str, texts_file: Path) -> None:
        # -P: the script's folder (gigarouter/bench, whose profile.py shadows the stdlib's) stays off sys.path
        self.proc = subprocess.Popen([str(python), "-P", str(PEER_SCRIPT), "worker", "--model-dir", str(model_dir),
                                      "--precision", precision], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env={"HF_HUB_OFFLINE": "1",
                                                                               "PATH": "/usr/bin:/bin"})
        self.precision = self._read()["precision"]
        self.ask({"texts": str(texts_file)})

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the OpenVINO worker exited; run openvino_peer.py worker by hand to see why")
        return json.loads(line)

    def ask(self, cmd: dict) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write('{"quit": true}\n')
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)


@dataclasses.dataclass
class Engine:
    name: str
    encode: Callable[[], float]              # seconds for all texts
    vectors: Callable[[int], np.ndarray]     # the first n vectors, normalised
    flops: float | None = None               # useful FLOPs of one pass over all texts (ours)
    precision: str = ""


def _ours(dtype: str, texts: list[str], *, label: str) -> Engine:
    from gigarouter.embedder import Embedder
    from gigarouter.settings import Settings, default_model

    embedder = Embedder(dataclasses.replace(default_model(), dtype=dtype), settings=Settings(cache="off"))
    embedder.encode(texts[:64])
    model = embedder.engine.model
    from gigarouter.bench.shapes import model_flops

    lengths = [len(it.token_ids) for it in embedder.recipe.prepare_texts(texts, input_type="document",
                                                                          instruction=None, truncate="end")]

    def encode() -> float:
        t0 = time.perf_counter()
        embedder.encode(texts)
        return time.perf_counter() - t0

    return Engine(label, encode, lambda n: embedder.encode(texts[:n]), flops=model_flops(model, lengths),
                  precision=embedder.engine.precision)


def _st_torch(model_dir: Path, texts: list[str]) -> Engine:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu")
    st.encode(texts[:64], batch_size=32)

    def encode() -> float:
        t0 = time.perf_counter()
        st.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
        return time.perf_counter() - t0

    return Engine("sentence-transformers, torch fp32", encode,
                  lambda n: st.encode(texts[:n], batch_size=32, normalize_embeddings=True), precision="float32")


def _openvino(python: Path, model_dir: Path, texts_file: Path, precision: str,
              workdir: Path) -> tuple[Engine, OpenVinoWorker]:
    worker = OpenVinoWorker(python, model_dir=model_dir, precision=precision, texts_file=texts_file)
    label = ("sentence-transformers backend=\"openvino\", its default precision" if precision == "default"
             else "same, OpenVINO with INFERENCE_PRECISION_HINT = f32")

    def vectors(n: int) -> np.ndarray:
        out = workdir / f"ov-{precision}.npy"
        worker.ask({"vectors": n, "out": str(out)})
        return np.load(out)

    return Engine(f"{label} (runs {worker.precision})", lambda: worker.ask({"encode": True})["seconds"], vectors,
                  precision=f"openvino {worker.precision}"), worker


def run_cpu_precision(*, texts: int = 1500, rounds: int = 3, fidelity_texts: int = 200,
                      openvino_python: Path | None = None, time_emulated_bf16: bool = False, log=print) -> dict:
    from gigarouter.engine.sources import embedded_model_dir

    model_dir = embedded_model_dir()
    corpus = list(mixed_corpus(texts).texts)
    flags = cpu_flags()
    default = choose_precision("auto", device_type="cpu", flags=flags)
    native_bf16 = default.mixed
    workdir = Path(tempfile.mkdtemp(prefix="gigarouter-cpu-precision-"))
    texts_file = workdir / "texts.json"
    texts_file.write_text(json.dumps(corpus))
    result: dict = {"kind": "cpu-precision", "machine": machine_info(), "texts": len(corpus), "rounds": rounds,
                    "fidelity_texts": fidelity_texts, "auto_precision": dataclasses.asdict(default),
                    "native_bf16_flags": sorted(f for f in flags if "bf16" in f or f.startswith("amx"))}
    log(f"auto precision on this CPU: {default.name} ({default.reason})")

    engines: list[Engine] = []
    workers: list[OpenVinoWorker] = []
    try:
        with_bf16 = native_bf16 or time_emulated_bf16
        for dtype in ("float32", "bfloat16-mixed", "bfloat16") if with_bf16 else ("float32",):
            label = f"gigarouter Embedder, {dtype}" + (" (default here)" if dtype == default.name else "")
            engines.append(_ours(dtype, corpus, label=label))
        engines.append(_st_torch(model_dir, corpus))
        if openvino_python is not None:
            for precision in ("default", "f32"):
                engine, worker = _openvino(openvino_python, model_dir, texts_file, precision, workdir)
                engines.append(engine)
                workers.append(worker)
        sizes = {"float32": (1024, 2048), "bfloat16": (1024, 2048) if native_bf16 else (256,)}
        result["matmul"] = {dtype: matmul_rate(device="cpu", dtype=dtype, sizes=sizes[dtype])
                            for dtype in ("float32", "bfloat16")}
        result["load_average_start"] = _loadavg()
        seconds: dict[str, list[float]] = {e.name: [] for e in engines}
        timed = engines
        for r in range(rounds):
            for e in timed if r % 2 == 0 else timed[::-1]:
                seconds[e.name].append(e.encode())
                log(f"  round {r} {e.name:<80} {len(corpus) / seconds[e.name][-1]:8.1f} inputs/s")
        result["load_average_end"] = _loadavg()
        result["matmul_end"] = {dtype: matmul_rate(device="cpu", dtype=dtype, sizes=sizes[dtype], repeats=2)
                                for dtype in ("float32", "bfloat16")}
        reference = next(e for e in engines if e.name.startswith("sentence-transformers, torch")).vectors(
            fidelity_texts)                                   # the reference: sentence-transformers, torch fp32
        rows = []
        for e in engines:
            cos = np.sum(e.vectors(fidelity_texts) * reference, axis=1)
            row = {"engine": e.name, "precision": e.precision, "min_cosine": float(cos.min()),
                   "mean_cosine": float(cos.mean()), "below_0.99997": int((cos < 0.99997).sum())}
            if e.name in seconds:
                median = statistics.median(seconds[e.name])
                row.update(inputs_per_s=len(corpus) / median, per_round=[len(corpus) / s for s in seconds[e.name]])
                if e.flops is not None:
                    peak_dtype = "float32" if e.precision == "float32" else "bfloat16"
                    peak = max(result[k][peak_dtype]["best_flops"] for k in ("matmul", "matmul_end"))
                    row.update(gflops=e.flops / median / 1e9, fraction_of_matmul_peak=e.flops / median / peak,
                               peak_dtype=peak_dtype)
            rows.append(row)
        result["rows"] = rows
    finally:
        for w in workers:
            w.close()
    return result


def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def markdown(result: dict) -> str:
    fp32 = next(r for r in result["rows"] if r["engine"].startswith("gigarouter Embedder, float32"))
    lines = ["| engine | inputs/s (median) | per round | vs gigarouter fp32 | min cosine | mean cosine | "
             "< 0.99997 | GFLOP/s | of matmul peak |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        ips = r.get("inputs_per_s")
        lines.append("| " + " | ".join([
            r["engine"], f"{ips:.1f}" if ips else "-",
            ", ".join(f"{x:.0f}" for x in r.get("per_round", [])) or "-",
            f"{ips / fp32['inputs_per_s']:.2f}x" if ips else "-",
            f"{r['min_cosine']:.7f}", f"{r['mean_cosine']:.7f}", str(r["below_0.99997"]),
            f"{r['gflops']:.1f}" if "gflops" in r else "-",
            f"{100 * r['fraction_of_matmul_peak']:.0f}% of {r['peak_dtype']}" if "gflops" in r else "-"]) + " |")
    peaks = ", ".join(f"{d} {max(result[k][d]['best_flops'] for k in ('matmul', 'matmul_end')) / 1e9:.1f} "
                      f"(n = {'/'.join(str(n) for n in result['matmul'][d]['sizes'])})"
                      for d in ("float32", "bfloat16"))
    lines.append(f"\nSquare-GEMM peaks in the same run (GFLOP/s, best over sizes and samples): {peaks}. "
                 f"Load average {result['load_average_start']} at start, {result['load_average_end']} at end.")
    return "\n".join(lines)
