"""``gigarouter models``: what is configured and cached, download weights, fold adapters in.

    gigarouter models list [--config FILE]
    gigarouter models pull NAME [--config FILE] [--revision REV]
    gigarouter models merge NAME --out DIR [--config FILE] [--dtype bfloat16]

NAME is a model served in --config (name or alias), a catalog card (slug or Hub
id), or any Hub id or directory. ``pull`` is how a machine without network gets
its weights: run it where there is network, with the same cache directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from gigarouter.catalog.cards import card_for_model, find_card, load_cards
from gigarouter.errors import ModelLoadError
from gigarouter.settings import ConfigError, ModelConfig, Settings, load_settings

app = typer.Typer(help="List, download and merge models.", no_args_is_help=True)


def _console() -> Console:
    # Made per command, not at import, so the terminal width (COLUMNS) is read when it is used.
    return Console()

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML settings file with [[models]].")]
CacheOpt = Annotated[Path | None, typer.Option("--cache-dir", help="Hugging Face cache (default: settings, then HF_HOME).")]
EndpointOpt = Annotated[str | None, typer.Option("--endpoint", envvar="HF_ENDPOINT", hidden=True,
                                                 help="Hub URL (tests and mirrors).")]


def _settings(config: Path | None, cache_dir: Path | None) -> Settings:
    try:
        return load_settings(config, cache_dir=cache_dir)
    except ConfigError as exc:
        _console().print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def model_for_name(name: str, settings: Settings, *, revision: str | None = None) -> tuple[ModelConfig, bool]:
    """A configured model by name or alias; else a card's Hub id; else ``name`` itself as weights.

    The flag says whether the recipe is known; for a bare Hub id or directory it is
    not, and merge takes the architecture from config.json instead.
    """
    for model in settings.models:
        if name in (model.name, *model.aliases):
            return model, True
    card = find_card(name)
    if card:
        return ModelConfig(name=card.slug, recipe=card.recipe, weights=card.hub_id, revision=revision), True
    return ModelConfig(name=name, recipe="e5", weights=name, revision=revision), False


def _merge_recipe(model: ModelConfig, known: bool, base_dir: Path) -> str:
    """The recipe only chooses the architecture for a merge (the attention switch does not touch weights)."""
    if known:
        return model.recipe
    from gigarouter.engine.loading import read_config

    return "sbert" if read_config(base_dir).get("model_type") == "bert" else "e5"


@app.command("list")
def list_models(config: ConfigOpt = None, cache_dir: CacheOpt = None) -> None:
    """Configured models and catalog cards, with whether their weights are on this machine."""
    from gigarouter.engine.sources import Fetcher, split_revision

    console = _console()
    settings = _settings(config, cache_dir)
    fetcher = Fetcher(cache_dir=settings.cache_dir, offline=True, progress=False)

    def cached(ref: str, revision: str | None = None) -> str:
        name, pinned = split_revision(ref)
        return "[green]yes[/green]" if fetcher.is_cached(name, revision or pinned) else "[dim]no[/dim]"

    served = Table(title="Configured models", title_justify="left")
    for column in ("name", "recipe", "weights", "adapters", "cached", "license"):
        served.add_column(column)
    for m in settings.models:
        card = card_for_model(m)
        weights_cached = cached(m.weights, m.revision)
        adapters = ", ".join(f"{a} ({'cached' if 'yes' in cached(a) else 'not cached'})" for a in m.adapters)
        served.add_row(m.name, m.recipe, m.weights, adapters or "-", weights_cached, card.license if card else "?")
    console.print(served)

    catalog = Table(title="Catalog", title_justify="left")
    for column in ("model", "Hub id", "recipe", "max tokens", "license", "cached"):
        catalog.add_column(column)
    for card in sorted(load_cards().values(), key=lambda c: c.slug):
        catalog.add_row(card.slug, card.hub_id, card.recipe, str(card.max_tokens), card.license, cached(card.hub_id))
    console.print(catalog)


@app.command()
def pull(name: Annotated[str, typer.Argument(help="Served model name, catalog model, Hub id or directory.")],
         config: ConfigOpt = None, cache_dir: CacheOpt = None,
         revision: Annotated[str | None, typer.Option(help="Branch, tag or commit (Hub ids only).")] = None,
         endpoint: EndpointOpt = None) -> None:
    """Download a model's weights, its base and its adapters into the Hugging Face cache."""
    from gigarouter.engine.sources import resolve_checkpoint

    console = _console()
    settings = _settings(config, cache_dir)
    model, _ = model_for_name(name, settings, revision=revision)
    try:
        resolved = resolve_checkpoint(model, cache_dir=settings.cache_dir, offline=False, progress=True,
                                      endpoint=endpoint)
    except ModelLoadError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from None
    console.print(f"[green]{model.name}[/green] is ready:")
    console.print(f"  base      {resolved.base_dir}")
    for adapter in resolved.adapter_dirs:
        console.print(f"  adapter   {adapter}")
    console.print(f"  tokenizer {resolved.tokenizer_dir}")


@app.command()
def merge(name: Annotated[str, typer.Argument(help="Served model name, catalog model, Hub id or directory.")],
          out: Annotated[Path, typer.Option("--out", help="Empty or new directory for the merged checkpoint.")],
          config: ConfigOpt = None, cache_dir: CacheOpt = None,
          dtype: Annotated[str | None, typer.Option(help="float32, bfloat16 or float16 (default: the checkpoint's).")] = None,
          offline: Annotated[bool, typer.Option(help="Use only the local cache.")] = False,
          endpoint: EndpointOpt = None) -> None:
    """Write one plain checkpoint with the adapters folded in (fast starts; loads in transformers too)."""
    import torch

    from gigarouter.engine.merge import merge_checkpoint
    from gigarouter.engine.sources import resolve_checkpoint
    from gigarouter.providers.local.loading import model_template

    console = _console()
    settings = _settings(config, cache_dir)
    model, known = model_for_name(name, settings)
    if dtype not in (None, "float32", "bfloat16", "float16"):
        console.print("[red]--dtype must be float32, bfloat16 or float16[/red]")
        raise typer.Exit(2)
    try:
        resolved = resolve_checkpoint(model, cache_dir=settings.cache_dir, offline=offline or settings.offline,
                                      progress=True, endpoint=endpoint)
        # The merged directory keeps the model's identity: its card and llm2vec template.
        card = card_for_model(model)
        template = model_template(model, card, resolved) if known and model.recipe == "llm2vec" else None
        with console.status(f"merging {len(resolved.adapter_dirs)} adapter(s) into {resolved.base_dir.name}"):
            merge_checkpoint(resolved, out, recipe_name=_merge_recipe(model, known, resolved.base_dir),
                             dtype=getattr(torch, dtype) if dtype else None,
                             card=card.slug if card else None, template=template.name if template else None)
    except ModelLoadError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from None
    console.print(f"[green]wrote {out}[/green]; serve it with weights = \"{out}\" and no adapters")


def main() -> None:  # pragma: no cover - `python -m gigarouter.models_cli`
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
