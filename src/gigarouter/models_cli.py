"""``gigarouter models``: what is configured and cached, download weights, fold adapters in.

    gigarouter models list [--config FILE]
    gigarouter models pull NAME [--config FILE] [--revision REV]
    gigarouter models merge NAME --out DIR [--config FILE] [--dtype bfloat16]

NAME is a model served in --config (name or alias), a catalog card (slug or Hub
id), or any Hub id or directory. ``pull`` is how a machine without network gets
its weights: run it where there is network, with the same cache directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from gigarouter.catalog.cards import card_for_model, find_card, load_cards
from gigarouter.engine.sources import HubUnreachable
from gigarouter.errors import ModelLoadError
from gigarouter.settings import ConfigError, ModelConfig, Settings, load_settings
from gigarouter.tables import print_table

app = typer.Typer(help="List, download and merge models.", no_args_is_help=True, rich_markup_mode=None)


def _console() -> Console:
    # Made per command, not at import, so the terminal width (COLUMNS) is read when it is used.
    return Console()

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML settings file with [[models]].")]
CacheOpt = Annotated[Path | None, typer.Option("--cache-dir",
                                                help="Hugging Face cache (default: settings, then HF_HOME).")]
EndpointOpt = Annotated[str | None, typer.Option("--endpoint", envvar="HF_ENDPOINT", hidden=True,
                                                 help="Hub URL (tests and mirrors).")]


def _settings(config: Path | None, cache_dir: Path | None) -> Settings:
    try:
        return load_settings(config, cache_dir=cache_dir)
    except ConfigError as exc:
        _fail(_console(), str(exc), code=2)


def _fail(console: Console, message: str, *, code: int = 1) -> NoReturn:
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


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

    def is_cached(ref: str, revision: str | None = None) -> bool:
        name, pinned = split_revision(ref)
        return fetcher.is_cached(name, revision or pinned)

    def cached(ref: str, revision: str | None = None) -> Text:
        return Text("yes", style="green") if is_cached(ref, revision) else Text("no", style="dim")

    served = []
    for m in settings.models:
        card = card_for_model(m)
        adapters = ", ".join(f"{a} ({'cached' if is_cached(a) else 'not cached'})" for a in m.adapters)
        served.append((m.name, m.recipe, m.weights, adapters or "-", cached(m.weights, m.revision),
                       card.license if card else "?"))
    print_table(console, ("name", "recipe", "weights", "adapters", "cached", "license"), served,
                title="Configured models")
    catalog = [(card.slug, card.hub_id, card.recipe, str(card.max_tokens), card.license, cached(card.hub_id))
               for card in sorted(load_cards().values(), key=lambda c: c.slug)]
    print_table(console, ("model", "Hub id", "recipe", "max tokens", "license", "cached"), catalog, title="Catalog")


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
    if settings.offline:
        _fail(console, "the settings say offline = true, and pulling downloads from the Hub: run it without "
                       "that setting (or on a machine with network, with the same cache_dir)")
    try:
        resolved = resolve_checkpoint(model, cache_dir=settings.cache_dir, offline=False, progress=True,
                                      endpoint=endpoint)
    except HubUnreachable as exc:
        hub = endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        _fail(console, f"cannot download {exc.ref}: the Hub ({hub}) cannot be reached from this machine. "
                       "Run `gigarouter models pull` where there is network and copy the Hugging Face cache here "
                       "(the same cache_dir), set HF_ENDPOINT to a mirror you can reach, or point `weights` "
                       "at a local directory.")
    except ModelLoadError as exc:
        _fail(console, exc.message)
    console.print(f"[green]{escape(model.name)}[/green] is ready:")
    console.print(f"  base      {resolved.base_dir}", markup=False, soft_wrap=True)
    for adapter in resolved.adapter_dirs:
        console.print(f"  adapter   {adapter}", markup=False, soft_wrap=True)
    console.print(f"  tokenizer {resolved.tokenizer_dir}", markup=False, soft_wrap=True)


@app.command()
def merge(name: Annotated[str, typer.Argument(help="Served model name, catalog model, Hub id or directory.")],
          out: Annotated[Path, typer.Option("--out", help="Empty or new directory for the merged checkpoint.")],
          config: ConfigOpt = None, cache_dir: CacheOpt = None,
          dtype: Annotated[str | None,
                           typer.Option(help="float32, bfloat16 or float16 (default: the checkpoint's).")] = None,
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
        _fail(console, "--dtype must be float32, bfloat16 or float16", code=2)
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
        _fail(console, exc.message)
    where = escape(str(out))
    console.print(f"[green]wrote {where}[/green]; serve it with weights = \"{where}\" and no adapters", soft_wrap=True)


def main() -> None:  # pragma: no cover - `python -m gigarouter.models_cli`
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
