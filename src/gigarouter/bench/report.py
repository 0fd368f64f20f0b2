"""Benchmark results out: JSON files, markdown tables, PNG plots (matplotlib, imported only to plot)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


def write_json(path: Path, result: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")
    return path


def _fmt(x, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(machine: dict) -> str:
    gpu = f", {machine['gpu']}" if machine.get("gpu") else ""
    return (f"{machine['cpu']}, {machine['cpu_cores']} cores{gpu}; load average at start "
            f"{'/'.join(str(x) for x in machine['load_average'])}; torch {machine['torch']}; "
            f"{machine['date']}; commit {machine.get('gigarouter_commit') or '?'}")


# -- engine ---------------------------------------------------------------------------------------

def engine_markdown(result: dict) -> str:
    peak = result["matmul"]["best_flops"]
    rows = [(r["name"], r["token_budget"], r["lengths"]["mean"], r["tokens_per_s"], r["inputs_per_s"],
             f"{100 * r['padding_fraction']:.0f}%", r["flops_per_token"] / 1e6, r["achieved_flops"] / 1e9,
             f"{100 * r['fraction_of_matmul_peak']:.0f}%", r["batch_ms_p50"],
             None if r["bytes_per_token"] is None else r["bytes_per_token"] / 1024)
            for r in result["runs"]]
    out = [f"Engine `{result['shape']}` on {result['device']} ({result['dtype']}, {result['threads']} torch threads); "
           f"dense matmul peak measured in the same run: {peak / 1e9:,.1f} GFLOP/s; "
           f"{result['matmul_params'] / 1e6:,.1f} M matmul parameters.",
           "",
           table(["workload", "token budget", "mean len", "tokens/s", "inputs/s", "attention padding",
                  "MFLOP/token", "GFLOP/s", "of matmul peak", "batch p50 ms", "KiB/token"], rows),
           "", "Mixed corpus against the batch token budget:", "",
           table(["token budget", "tokens/s", "batch p50 ms", "batch max ms", "attention padding", "KiB/token"],
                 [(r["token_budget"], r["tokens_per_s"], r["batch_ms_p50"], r["batch_ms_max"],
                   f"{100 * r['padding_fraction']:.0f}%",
                   None if r["bytes_per_token"] is None else r["bytes_per_token"] / 1024)
                  for r in result["budget_sweep"]])]
    hf = result.get("transformers")
    if hf:
        out += ["", f"Against transformers {hf['transformers_version']} `MistralModel` "
                    f"({hf['attn_implementation']}, {hf['padding']}), same batches, interleaved:", "",
                table(["workload", "ours tokens/s", "transformers tokens/s", "ratio"],
                      [(r["name"], r["ours_tokens_per_s"], r["transformers_tokens_per_s"], f"{r['ratio']:.2f}x")
                       for r in hf["rows"]]),
                "", f"Last-token agreement: min cosine {hf['last_token_agreement']['min_cosine']:.6f}, "
                    f"max abs diff {hf['last_token_agreement']['max_abs_diff']:.3g}."]
    return "\n".join(out)


def plot_engine(result: dict, path: Path) -> Path:
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    sweep = result["budget_sweep"]
    budgets = [r["token_budget"] for r in sweep]
    a.plot(budgets, [r["tokens_per_s"] for r in sweep], "o-", label="tokens/s")
    a.set_xscale("log", base=2)
    a.set_xlabel("batch token budget")
    a.set_ylabel("tokens/s (mixed corpus)")
    a2 = a.twinx()
    a2.plot(budgets, [r["batch_ms_p50"] for r in sweep], "s--", color="tab:red", label="batch p50 ms")
    a2.set_ylabel("batch latency p50 (ms)", color="tab:red")
    a.set_title("throughput vs token budget")
    fixed = result["runs"]
    names = [r["name"] for r in fixed]
    b.bar(names, [100 * r["fraction_of_matmul_peak"] for r in fixed])
    b.set_ylabel("% of dense matmul peak")
    b.set_title(f"{result['shape']} on {result['device']} ({result['dtype']})")
    for i, r in enumerate(fixed):
        b.annotate(f"{r['tokens_per_s']:,.0f} tok/s", (i, 100 * r["fraction_of_matmul_peak"]),
                   ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# -- compare --------------------------------------------------------------------------------------

def compare_markdown(result: dict) -> str:
    names = result["server_names"]
    ours, peer = names[0], names[1] if len(names) > 1 else None
    st = result["offline"]["results"]["sentence-transformers"] if result.get("offline") else None
    rows = []
    for cell in result["summary"]:
        g = cell["servers"][ours]
        p = cell["servers"].get(peer) if peer else None
        row = [cell["label"], g["inputs_per_s"], p["inputs_per_s"] if p else None,
               _ratio(g["inputs_per_s"], p["inputs_per_s"] if p else None),
               _ratio(g["inputs_per_s"], st["inputs_per_s"] if st else None),
               g["tokens_per_s"], p["tokens_per_s"] if p else None,
               f"{g['p50_ms']:.0f} / {g['p99_ms']:.0f}", f"{p['p50_ms']:.0f} / {p['p99_ms']:.0f}" if p else "-",
               g["cpu_ms_per_input"], p["cpu_ms_per_input"] if p else None,
               errors_text(g["errors"]) + (" / " + errors_text(p["errors"]) if p else "")]
        rows.append(row)
    header = ["workload", f"{ours} inputs/s", f"{peer} inputs/s", f"ratio vs {peer}", "ratio vs ST offline",
              f"{ours} tokens/s", f"{peer} tokens/s", f"{ours} p50/p99 ms", f"{peer} p50/p99 ms",
              f"{ours} server CPU ms/input", f"{peer} server CPU ms/input", "errors"]
    out = [table(header, rows)]
    extra = [n for n in names[2:]]
    if extra:
        out += ["", table(["workload", *[f"{n} inputs/s" for n in extra], *[f"{n} vs {ours}" for n in extra]],
                          [[c["label"], *[c["servers"][n]["inputs_per_s"] for n in extra],
                            *[_ratio(c["servers"][n]["inputs_per_s"], c["servers"][ours]["inputs_per_s"])
                              for n in extra]] for c in result["summary"] if all(n in c["servers"] for n in extra)])]
    if result.get("offline"):
        off = result["offline"]
        rows = [(name, r["inputs_per_s"], r["tokens_per_s"], _ratio(r["inputs_per_s"], st["inputs_per_s"]))
                for name, r in off["results"].items()]
        out += ["", f"Offline, {off['inputs']} texts ({off['tokens']} tokens), best of {off['repeats']} interleaved "
                    f"runs; sentence-transformers batch size {off['st_batch_size']}, ours token budget "
                    f"{off['our_token_budget']}; vectors agree to min cosine {off['agreement']['min_cosine']:.6f}:",
                "", table(["offline", "inputs/s", "tokens/s", "vs sentence-transformers"], rows)]
    if result.get("latency"):
        rows = [(n, r["query_tokens"], r["idle"]["p50_ms"], r["idle"]["p99_ms"], r["loaded"]["p50_ms"],
                 r["loaded"]["p99_ms"], f"{r['p50_slowdown']:.1f}x" if r["p50_slowdown"] else "-",
                 r["bulk"]["inputs_per_s"]) for n, r in result["latency"].items()]
        out += ["", table(["server", "query tokens", "idle p50 ms", "idle p99 ms", "loaded p50 ms", "loaded p99 ms",
                           "p50 slowdown", "bulk inputs/s meanwhile"], rows)]
    return "\n".join(out)


def errors_text(errors: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(errors.items())) or "0"


def plot_compare(result: dict, directory: Path, stem: str = "compare") -> list[Path]:
    plt = _pyplot()
    names = result["server_names"]
    cells = result["summary"]
    labels = [c["label"] for c in cells]
    width = 0.8 / len(names)
    paths = []

    fig, ax = plt.subplots(figsize=(10, 4.5))
    for k, name in enumerate(names):
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(cells))]
        vals = [c["servers"].get(name, {}).get("inputs_per_s", 0) for c in cells]
        lo = [v - c["servers"].get(name, {}).get("inputs_per_s_min", v) for v, c in zip(vals, cells, strict=True)]
        hi = [c["servers"].get(name, {}).get("inputs_per_s_max", v) - v for v, c in zip(vals, cells, strict=True)]
        ax.bar(xs, vals, width, yerr=[lo, hi], capsize=3, label=name)
    for name, style in (("sentence-transformers", "--"), ("gigarouter-embedder", ":")):
        if result.get("offline"):
            ax.axhline(result["offline"]["results"][name]["inputs_per_s"], linestyle=style, color="gray",
                       label=f"{name} (offline)")
    ax.set_xticks(range(len(cells)), labels)
    ax.set_ylabel("inputs/s (mixed corpus)")
    ax.set_title("served throughput, closed loop (bars: mean of rounds; whiskers: min-max)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(_save(fig, directory / f"{stem}-throughput.png"))

    fig, ax = plt.subplots(figsize=(10, 4.5))
    for k, name in enumerate(names):
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(cells))]
        p50 = [c["servers"].get(name, {}).get("p50_ms", 0) for c in cells]
        p99 = [c["servers"].get(name, {}).get("p99_ms", 0) for c in cells]
        ax.bar(xs, p99, width, alpha=0.35, color=f"C{k}")
        ax.bar(xs, p50, width, color=f"C{k}", label=f"{name} p50 (light: p99)")
    ax.set_yscale("log")
    ax.set_xticks(range(len(cells)), labels)
    ax.set_ylabel("request latency (ms)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(_save(fig, directory / f"{stem}-latency.png"))

    if result.get("latency"):
        fig, ax = plt.subplots(figsize=(7, 4))
        lat = result["latency"]
        servers = list(lat)
        for k, (phase, key) in enumerate((("idle", "p50_ms"), ("loaded", "p50_ms"), ("loaded", "p99_ms"))):
            ax.bar([i + (k - 1) * 0.27 for i in range(len(servers))], [lat[s][phase][key] or 0 for s in servers],
                   0.27, label=f"{phase} {key.split('_')[0]}")
        ax.set_xticks(range(len(servers)), servers)
        ax.set_yscale("log")
        ax.set_ylabel("single 16-token query latency (ms)")
        ax.set_title("query latency while a bulk load saturates the server")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(_save(fig, directory / f"{stem}-query-latency.png"))
    return paths


# -- gateway --------------------------------------------------------------------------------------

def gateway_markdown(result: dict) -> str:
    summ, c = result["summary"], result["settings"]["concurrency"]
    direct = summ["targets"]["direct"]
    rows = []
    for name, t in summ["targets"].items():
        added = None if name == "direct" else (f"{t['c1_p50_ms'] - direct['c1_p50_ms']:.2f} / "
                                               f"{t['c1_p99_ms'] - direct['c1_p99_ms']:.2f}")
        rows.append((name, f"{t['c1_p50_ms']:.2f}", f"{t['c1_p99_ms']:.2f}", added or "-",
                     t["max_requests_per_s"], f"{t['max_p50_ms']:.1f} / {t['max_p99_ms']:.1f}",
                     _fmt(t["max_cpu_ms_per_request"], 3), t["failed"]))
    out = [table(["target", "c=1 p50 ms", "c=1 p99 ms", "added p50 / p99 ms", f"c={c} req/s",
                  f"c={c} p50 / p99 ms", f"c={c} server CPU ms/req", "failed requests"], rows)]
    rounds = summ["per_round"]

    def line(key: str, label: str, unit: str = "x") -> str | None:
        if key not in rounds:
            return None

        def num(v: float) -> str:    # small ratios (a proxy against the bare upstream) keep two digits
            return f"{v:.2f}" if abs(v) >= 0.1 else f"{v:.2g}"

        med = summ["ratios"][key]
        each = ", ".join(num(v) for v in rounds[key])
        return f"- {label}: **{num(med)}{unit}** (per round {each})"

    lines = [line("gigarouter_added_p50_ms", "gigarouter added latency p50, c=1", " ms"),
             line("gigarouter_added_p99_ms", "gigarouter added latency p99, c=1", " ms"),
             line("litellm_added_p50_ms", "litellm added latency p50, c=1", " ms"),
             line("litellm_added_p99_ms", "litellm added latency p99, c=1", " ms"),
             line("gigarouter_vs_direct_throughput", f"throughput gigarouter / direct, c={c}"),
             line("gigarouter_vs_litellm_throughput", f"throughput gigarouter / litellm, c={c}"),
             line("litellm_vs_gigarouter_p50", "latency litellm / gigarouter, c=1 p50"),
             line("litellm_vs_gigarouter_p99", "latency litellm / gigarouter, c=1 p99"),
             line("litellm_vs_gigarouter_cpu_per_request", f"server CPU per request litellm / gigarouter, c={c}")]
    out += ["", "Medians over rounds; ratios taken within each round, then their median:", "",
            *[x for x in lines if x]]
    if not result.get("valid", True):
        out += ["", "**INVALID: some requests failed (see `failed requests`).**"]
    return "\n".join(out)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
