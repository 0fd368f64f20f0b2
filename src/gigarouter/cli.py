"""The ``gigarouter`` command: serve, embed files in bulk, manage models, accounts and the database."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from gigarouter.errors import ModelLoadError
from gigarouter.settings import DEFAULT_MODEL_NAME, ConfigError, load_settings

# rich_markup_mode=None: help text is plain, so `[[models]]` is shown as written.
app = typer.Typer(help="gigarouter: an OpenAI-compatible embeddings service.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_show_locals=False, rich_markup_mode=None)
console = Console(stderr=True)

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="TOML file: [[models]], [[providers]] and "
                                                      "settings (docs/models.md).",
                                                      exists=True, dir_okay=False)]


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind. Default: the config's host, else 127.0.0.1.",
                                                show_default=False)] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on. Default: the config's port, else 8000.",
                                                show_default=False)] = None,
    config: ConfigOption = None,
    data_dir: Annotated[Path | None, typer.Option(help="Where the SQLite database and server secret live.")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Start the HTTP service (the embedded default model when no --config is given).

    It prints a "ready" line once every model is loaded (GET /ready answers 200 from then on).
    A model that fails to load stops the server with exit status 1, unless the config sets
    keep_serving_on_load_failure = true.
    """
    from gigarouter.api.app import create_app
    from gigarouter.serving import Server

    # Flags win only when given: None leaves the config file's host and port (or the defaults).
    settings = _settings(config, host=host, port=port, data_dir=data_dir)
    _check_extras(settings)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    names = ", ".join(m.name for m in settings.models) or "no local model"
    _say(f"[bold]gigarouter[/] starting on http://{settings.host}:{settings.port}, loading [cyan]{escape(names)}[/]")
    server = Server(create_app(settings), settings, log_level=log_level, say=_say)
    raise typer.Exit(server.serve_until_stopped())


@app.command()
def embed(
    file: Annotated[Path, typer.Argument(help="Text file (one input per line) or JSONL ({\"text\": ...} per line).",
                                         exists=True, dir_okay=False)],
    model: Annotated[str, typer.Option("--model", "-m", help="Model name or alias.")] = DEFAULT_MODEL_NAME,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output .npy, .jsonl or .ndjson "
                                                "(default: FILE.embeddings.jsonl).")] = None,
    input_type: Annotated[str, typer.Option(help="document or query.")] = "document",
    instruction: Annotated[str | None, typer.Option(help="Query instruction (free text or a named task).")] = None,
    embedding_type: Annotated[str, typer.Option(help="float, or a compact type: int8, uint8, binary, ubinary "
                                                     "(docs/api.md).")] = "float",
    dimensions: Annotated[int | None, typer.Option(help="Keep the first N components (then normalise and "
                                                        "quantize).", min=1)] = None,
    config: ConfigOption = None,
) -> None:
    """Embed a file in bulk through the engine, in-process (no HTTP).

    Blank lines of a text file are skipped and reported: row i of a .npy output is the i-th
    non-blank line, and JSONL outputs carry each input's line number as its id.
    """
    from gigarouter.bulk import check_output, read_inputs, write_outputs
    from gigarouter.embedder import Embedder
    from gigarouter.pooling.encoding import EMBEDDING_TYPES, quantize

    if input_type not in ("document", "query"):
        raise typer.BadParameter("must be 'document' or 'query'", param_hint="--input-type")
    if embedding_type not in EMBEDDING_TYPES:
        raise typer.BadParameter(f"must be one of {', '.join(EMBEDDING_TYPES)}", param_hint="--embedding-type")
    settings = _settings(config)
    out = out or file.with_suffix(".embeddings.jsonl")
    check_output(out)                  # before any work: a bad --out must not cost an embedding run
    records, blank = read_inputs(file)
    if blank:
        shown = ", ".join(map(str, blank[:10])) + (", ..." if len(blank) > 10 else "")
        _say(f"skipped {len(blank)} blank line{'' if len(blank) == 1 else 's'} of {file} (line {shown})")
    with console.status(f"loading {escape(model)}"), _quiet_load_log():
        try:
            embedder = Embedder(model, settings=settings)
        except ModelLoadError as exc:
            _fail(f"could not load {model}: {exc.message}")
        except ValueError as exc:      # not a configured model
            raise typer.BadParameter(str(exc), param_hint="--model") from None
        except Exception as exc:   # any other load failure: one line too, not a traceback
            _fail(f"could not load {model}: {type(exc).__name__}: {exc}")
    with Progress(TextColumn("[bold]embedding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        task = progress.add_task("embed", total=len(records))
        vectors = embedder.encode([r.text for r in records], input_type=input_type, instruction=instruction,
                                  dimensions=dimensions, progress=lambda n: progress.advance(task, n))
    vectors = quantize(vectors, embedding_type)     # the same bytes as /v1/embeddings' embedding_type
    write_outputs(out, records, vectors)
    _say(f"wrote {len(records)} vectors of dimension {vectors.shape[1]} to {escape(str(out))}")


def _say(message: str) -> None:
    """One line to stderr, never wrapped (a log file or a pipe gets it whole)."""
    console.print(message, soft_wrap=True, highlight=False)


def _fail(message: str, code: int = 1) -> NoReturn:
    _say(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(code)


@contextmanager
def _quiet_load_log() -> Iterator[None]:
    """The CLI reports a failed load itself, in one line: keep the loader's own log line out of the way."""
    logger = logging.getLogger("gigarouter.providers.local.deployment")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_extras(settings) -> None:
    """Optional packages the settings need, checked before anything starts."""
    from gigarouter.extras import MissingExtra, needs_psycopg, require

    try:
        if needs_psycopg(settings.database_url):
            require("psycopg")
    except MissingExtra as exc:
        _fail(str(exc))


def _settings(config: Path | None, **overrides):
    try:
        return load_settings(config, **overrides)
    except ConfigError as exc:
        _say(f"[red]configuration error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None


def _mount_subcommands() -> None:
    """Sub-apps that live beside the code they manage."""
    from gigarouter.accounts.cli import accounts_app, credits_app, db_app, keys_app
    from gigarouter.bench_cli import app as bench_app
    from gigarouter.models_cli import app as models_app
    from gigarouter.onboarding.cli import onboard_command

    app.add_typer(models_app, name="models", help="List, download and merge models.")
    app.add_typer(accounts_app, name="accounts", help="Create and list accounts.")
    app.add_typer(keys_app, name="keys", help="Create, list and revoke API keys.")
    app.add_typer(credits_app, name="credits", help="Grant credit to accounts.")
    app.add_typer(db_app, name="db", help="Database migrations.")
    app.add_typer(bench_app, name="bench", help="Benchmarks: engine, HTTP load, comparisons with peers.")
    app.command("onboard")(onboard_command)


_mount_subcommands()


def main() -> None:
    try:
        app()
    except ImportError as exc:
        # An optional package a command needs (psycopg, matplotlib, ...): say which extra brings it.
        from gigarouter.extras import hint_for

        hint = hint_for(exc)
        if hint is None:
            raise
        console.print(f"[red]error:[/] {escape(str(hint))}", soft_wrap=True, highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()



