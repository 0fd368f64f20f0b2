"""The ``gigarouter`` command: serve, embed files in bulk, manage models, accounts and the database."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from gigarouter.settings import DEFAULT_MODEL_NAME, ConfigError, load_settings

app = typer.Typer(help="gigarouter: an OpenAI-compatible embeddings service.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_show_locals=False)
console = Console(stderr=True)

ConfigOption = Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML file listing models and settings.",
                                                      exists=True, dir_okay=False)]


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    config: ConfigOption = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Where the SQLite database and server secret live.")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Start the HTTP service (the embedded default model when no --config is given)."""
    import uvicorn

    from gigarouter.api.app import create_app

    settings = _settings(config, host=host, port=port, data_dir=data_dir)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    names = ", ".join(m.name for m in settings.models)
    console.print(f"[bold]gigarouter[/] serving [cyan]{names}[/] on http://{settings.host}:{settings.port}")
    # proxy_headers=False: uvicorn would believe X-Forwarded-For from 127.0.0.1; the app believes it
    # only from the configured trusted_proxies (api/middleware.py).
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=log_level,
                timeout_graceful_shutdown=30, proxy_headers=False)


@app.command()
def embed(
    file: Annotated[Path, typer.Argument(help="Text file (one input per line) or JSONL ({\"text\": ...} per line).",
                                         exists=True, dir_okay=False)],
    model: Annotated[str, typer.Option("--model", "-m", help="Model name or alias.")] = DEFAULT_MODEL_NAME,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output .jsonl or .npy (default: FILE.embeddings.jsonl).")] = None,
    input_type: Annotated[str, typer.Option(help="document or query.")] = "document",
    instruction: Annotated[Optional[str], typer.Option(help="Query instruction (free text or a named task).")] = None,
    config: ConfigOption = None,
) -> None:
    """Embed a file in bulk through the engine, in-process (no HTTP)."""
    from gigarouter.bulk import read_inputs, write_outputs
    from gigarouter.embedder import Embedder

    if input_type not in ("document", "query"):
        raise typer.BadParameter("must be 'document' or 'query'", param_hint="--input-type")
    settings = _settings(config)
    records = read_inputs(file)
    out = out or file.with_suffix(".embeddings.jsonl")
    with console.status(f"loading {model}"):
        try:
            embedder = Embedder(model, settings=settings)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--model") from None
    with Progress(TextColumn("[bold]embedding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        task = progress.add_task("embed", total=len(records))
        vectors = embedder.encode([r.text for r in records], input_type=input_type, instruction=instruction,
                                  progress=lambda n: progress.advance(task, n))
    write_outputs(out, records, vectors)
    console.print(f"wrote {len(records)} vectors of dimension {vectors.shape[1]} to {out}")


def _settings(config: Path | None, **overrides):
    try:
        return load_settings(config, **overrides)
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2) from None


def _mount_subcommands() -> None:
    """Sub-apps that live beside the code they manage."""
    from gigarouter.accounts.cli import accounts_app, credits_app, db_app, keys_app
    from gigarouter.bench_cli import app as bench_app
    from gigarouter.models_cli import app as models_app

    app.add_typer(models_app, name="models", help="List, download and merge models.")
    app.add_typer(accounts_app, name="accounts", help="Create and list accounts.")
    app.add_typer(keys_app, name="keys", help="Create, list and revoke API keys.")
    app.add_typer(credits_app, name="credits", help="Grant credit to accounts.")
    app.add_typer(db_app, name="db", help="Database migrations.")
    app.add_typer(bench_app, name="bench", help="Benchmarks: engine, HTTP load, comparisons with peers.")


_mount_subcommands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()



