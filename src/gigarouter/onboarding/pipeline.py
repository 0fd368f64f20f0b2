"""One onboarding run: fidelity, quality, speed, then a dated result and the model's status.

    run = onboard(card_or_name, target, store=OnboardingStore(engine), options=Options(tasks=["SciFact"]))

Every step runs even when an earlier one failed (a run reports everything it learnt); the run
passes only when every step passes. The reason a run failed is its first failing step's message,
which the model page shows while the model is out of live.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from gigarouter.catalog.cards import ModelCard
from gigarouter.onboarding import fidelity, quality, speed
from gigarouter.onboarding.store import OnboardingStore, Run
from gigarouter.onboarding.targets import Target

STEPS = ("fidelity", "quality", "speed")


@dataclass(frozen=True)
class Options:
    tasks: Sequence[str] | None = None          # MTEB tasks instead of the card's benchmark table
    probes: Path | None = None                  # reference probe vectors instead of the card's
    min_cosine: float = fidelity.DEFAULT_MIN_COSINE
    max_drop: float = quality.DEFAULT_MAX_DROP
    speed_sample: int = speed.DEFAULT_SAMPLE
    latency_samples: int = speed.DEFAULT_LATENCY_SAMPLES
    published: dict[str, float] = field(default_factory=dict)   # the card's numbers for this model


def versions() -> dict[str, str]:
    """What the result depends on: the library versions in this process."""
    found = {"python": platform.python_version()}
    for dist in ("gigarouter", "torch", "transformers", "tokenizers", "mteb", "numpy"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found


def device_of(target: Target) -> str:
    from gigarouter.bench.machine import cpu_model

    device = target.device()
    return f"{device} ({cpu_model()})" if device.startswith("cpu") and "(" not in device else device


def onboard(model: str, card: ModelCard | None, target: Target, *, store: OnboardingStore | None,
            options: Options = Options(), progress: Callable[[str], None] | None = None,
            run: Run | None = None) -> dict[str, Any]:
    """Run every step against ``target``; record the run in ``store`` (if given). Returns the summary.

    ``model`` is the catalog key (the card's slug); ``run`` is a run the caller started already
    (the web starts it before the background thread, so the queue shows it at once).
    """
    from gigarouter.bench.machine import git_commit
    from gigarouter.onboarding.mteb_models import GigarouterEncoder

    if store is not None and run is None:
        run = store.start(model, provider=target.name, commit=git_commit(), device=device_of(target),
                          versions=versions())
    results: dict[str, Any] = {}

    def say(line: str, step: str) -> None:
        if progress:
            progress(line)
        if store is not None and run is not None:
            store.report(run.id, step=step, progress=line, results=results)

    def step(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        say(f"{name}: starting", name)
        try:
            results[name] = fn()
        except Exception as exc:   # a step's failure is its result: recorded, and the next step still runs
            results[name] = {"passed": False, "error": f"{type(exc).__name__}: {exc}"}
        say(f"{name}: {'passed' if results[name].get('passed') else 'failed'}", name)

    def run_fidelity() -> dict[str, Any]:
        path = options.probes or fidelity.card_probes(card)
        if path is None:
            raise fidelity.ProbesMissing("no reference probe vectors: the card names none (reference_probes); "
                                         "give a file with --probes")
        return fidelity.run_fidelity(target, fidelity.load_probes(path), min_cosine=options.min_cosine,
                                     progress=lambda line: say(line, "fidelity"))

    def run_quality() -> dict[str, Any]:
        encoder = GigarouterEncoder(target, card=card)
        return quality.run_quality(encoder, card, tasks=options.tasks, max_drop=options.max_drop,
                                   published=options.published, progress=lambda line: say(line, "quality"))

    def run_speed() -> dict[str, Any]:
        return speed.run_speed(target, sample=options.speed_sample, latency_samples=options.latency_samples,
                               progress=lambda line: say(line, "speed"))

    step("fidelity", run_fidelity)
    step("quality", run_quality)
    step("speed", run_speed)
    reason = failure_reason(results)
    summary = {"model": model, "provider": target.name, "device": device_of(target), "passed": reason is None,
               "reason": reason, "results": results}
    if store is not None and run is not None:
        finished = store.finish(run.id, results=results, reason=reason)
        summary.update(run_id=finished.id, state=finished.state, commit=finished.commit,
                       started_at=finished.started_at.isoformat(), versions=finished.versions)
    return summary


def failure_reason(results: dict[str, Any]) -> str | None:
    """The first failing step, in words."""
    for name in STEPS:
        result = results.get(name, {})
        if result.get("passed"):
            continue
        if "error" in result:
            return f"{name}: {result['error']}"
        if name == "fidelity":
            return (f"fidelity: lowest cosine to the reference {result['min_cosine']:.6f} is under "
                    f"{result['threshold']}")
        if name == "quality":
            low = ", ".join(f"{c} {result['published'][c]} published, {result['columns'][c]} measured"
                            for c in result.get("too_low", {}))
            return f"quality: MTEB below the card's numbers ({low})" if low else "quality: not every task ran"
        return f"{name}: failed"
    return None
