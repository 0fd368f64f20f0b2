"""``gigarouter onboard NAME``: fidelity, quality (MTEB) and speed through the real serving path.

    gigarouter onboard linq-embed-mistral --config serve.toml                 # in-process
    gigarouter onboard linq-embed-mistral --provider http://gpu-box:8000/v1 --api-key gr-...
    gigarouter onboard all-MiniLM-L6-v2 --tasks SciFact,STSBenchmark

The result is written to the accounts database of the settings (``--config``; SQLite in the data
directory by default) with the commit, device and library versions, and moves the model's catalog
status (docs/onboarding.md). Exit status 0 when every step passed, 1 when one failed, 2 for bad input.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from gigarouter.errors import ModelLoadError
from gigarouter.settings import ConfigError, load_settings

console = Console(stderr=True)


def onboard_command(
    name: Annotated[str, typer.Argument(help="Catalog model (slug, Hub id or alias) or a served model's name.")],
    provider: Annotated[str | None, typer.Option(
        help="An OpenAI-compatible base URL (ending in /v1) to measure instead of loading the model here.")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="GIGAROUTER_API_KEY",
                                                help="Bearer key for --provider (env GIGAROUTER_API_KEY).")] = None,
    provider_model: Annotated[str | None, typer.Option(
        help="The `model` to send to --provider (default: the served name, or NAME).")] = None,
    tasks: Annotated[str | None, typer.Option(
        help="Comma-separated MTEB tasks instead of those the card's benchmark table quotes.")] = None,
    probes: Annotated[Path | None, typer.Option(help="Reference probe vectors (JSON, golden format) instead of "
                                                     "the card's.", exists=True, dir_okay=False)] = None,
    min_cosine: Annotated[float, typer.Option(help="Fidelity: lowest cosine to the reference that passes.")] = 0.999,
    max_drop: Annotated[float, typer.Option(help="Quality: MTEB points under the card's number that still "
                                                 "pass.")] = 1.0,
    speed_sample: Annotated[int, typer.Option(help="Speed: texts of the bench mix.", min=8)] = 512,
    latency_samples: Annotated[int, typer.Option(help="Speed: one-query requests timed.", min=1)] = 20,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML settings: models and database.",
                                                exists=True, dir_okay=False)] = None,
    database_url: Annotated[str | None, typer.Option(help="Where results go (default: the settings').")] = None,
    no_record: Annotated[bool, typer.Option("--no-record", help="Measure only; write nothing to the "
                                                                "database.")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the result as JSON here.",
                                                  dir_okay=False)] = None,
) -> None:
    """Onboard a model: its vectors against the reference, MTEB on the card's tasks, speed on this device.

    A passing run makes the model live in the catalog; a failing one takes it out of live with the
    reason shown on its page.
    """
    from gigarouter.catalog.cards import card_for_model, find_card, load_cards
    from gigarouter.onboarding.pipeline import Options, onboard
    from gigarouter.onboarding.store import RunInProgress
    from gigarouter.onboarding.targets import HttpTarget, InProcessTarget

    try:
        settings = load_settings(config, **({"database_url": database_url} if database_url else {}))
    except ConfigError as exc:
        _fail(f"configuration error: {exc}", 2)
    configured = next((m for m in settings.models
                       if name.lower() in (n.lower() for n in (m.name, *m.aliases))), None)
    card = card_for_model(configured) if configured else find_card(name)
    if configured is None and card is not None:
        configured = next((m for m in settings.models if card_for_model(m) == card), None)
    if card is None and configured is None:
        _fail(f"{name!r} is neither a catalog model nor configured in the settings", 2)
    key = card.slug if card else configured.name
    task_list = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
    from gigarouter.web.catalog import benchmark_scores

    published = benchmark_scores(card, load_cards().values()) if card else {}
    options = Options(tasks=task_list, probes=probes, min_cosine=min_cosine, max_drop=max_drop,
                      speed_sample=speed_sample, latency_samples=latency_samples, published=published)
    store = None if no_record else _store(settings)
    try:
        if provider:
            target = HttpTarget(provider, provider_model or (configured.name if configured else name),
                                api_key=api_key)
        else:
            if configured is None:
                _fail(f"{name} is not served by these settings: add it to [[models]] in --config, or measure a "
                      "running deployment with --provider URL", 2)
            with console.status(f"loading {escape(configured.name)}"):
                target = InProcessTarget.load(configured.name, settings)
    except (ModelLoadError, ValueError) as exc:
        _fail(f"could not load {name}: {getattr(exc, 'message', exc)}")
    try:
        summary = onboard(key, card, target, store=store, options=options, progress=_say)
    except RunInProgress:
        _fail(f"{key} is being onboarded already, by a process that is still running: wait for that run "
              "(the admin queue shows it)", 2)
    finally:
        target.close()
        if store is not None:
            store.close()          # its liveness lock: a run this left running now counts as abandoned
            store.engine.dispose()
    _report(summary, recorded=store is not None)
    if json_out:
        json_out.write_text(json.dumps(summary, indent=1, default=str) + "\n", encoding="utf-8")
    raise typer.Exit(0 if summary["passed"] else 1)


def _store(settings):
    from gigarouter.accounts import migrations
    from gigarouter.accounts.db import is_sqlite, make_engine
    from gigarouter.onboarding.store import OnboardingStore

    url = settings.resolved_database_url
    try:
        migrations.ensure_current(url, migrate=is_sqlite(url))
    except ConfigError as exc:
        _fail(str(exc))
    return OnboardingStore(make_engine(url, pool_size=1))


def _report(summary: dict[str, Any], *, recorded: bool) -> None:
    results = summary["results"]
    f, q, s = results.get("fidelity", {}), results.get("quality", {}), results.get("speed", {})
    if "min_cosine" in f:
        _say(f"fidelity  lowest cosine {f['min_cosine']:.6f} over {f['texts']} texts (threshold {f['threshold']})")
    for task, score in q.get("scores", {}).items():
        _say(f"quality   {task}: {score:.2f}")
    for column, score in q.get("columns", {}).items():
        published = q.get("published", {}).get(column)
        _say(f"quality   {column}: {score:.2f} measured" + (f", {published} published" if published else ""))
    if "tokens_per_second" in s:
        _say(f"speed     {s['tokens_per_second']:.0f} tokens/s on {s['texts']} texts; one query p50 "
             f"{s['query_latency_ms_p50']:.1f} ms ({summary['device']})")
    if summary["passed"]:
        _say(f"[green]passed[/]: {escape(summary['model'])} is live" if recorded
             else "[green]passed[/] (--no-record: the catalog status is unchanged)")
    else:
        _say(f"[red]failed[/]: {escape(summary['reason'] or '')}")


def _say(line: str) -> None:
    console.print(line, soft_wrap=True, highlight=False)


def _fail(message: str, code: int = 1):
    _say(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(code)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
