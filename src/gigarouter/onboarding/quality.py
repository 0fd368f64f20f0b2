"""Quality: an MTEB evaluation (mteb 2.x) on the tasks the card's benchmark table quotes.

A card maps each benchmark column to the MTEB tasks behind it (``mteb_tasks``: a list of task
names, or the name of an mteb benchmark such as ``"MTEB(eng, v1)"``). The measured score of a
column is the mean of its tasks' main scores x 100, the way MTEB tables quote them, and is put
beside the card's published number only when every task of the column ran; ``--tasks`` gives a
list of its own instead (measured per task, compared with nothing).

The step passes when every task ran, and no column's measured score is more than ``max_drop``
points under the card's published one for this model.

``register_local_task`` makes a task class (mteb's task classes with local data, no downloads)
resolvable by name: tests use tiny ones, an operator can add private ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from gigarouter.catalog.cards import ModelCard

#: Published minus measured, in MTEB points (x100), that still passes.
DEFAULT_MAX_DROP = 1.0

_LOCAL_TASKS: dict[str, type] = {}


class NoTasks(LookupError):
    """Neither the card's benchmark table nor the command line names an MTEB task."""


def register_local_task(task_class: type) -> type:
    """Make an mteb task class (with its own ``load_data``) resolvable by its metadata name."""
    _LOCAL_TASKS[task_class.metadata.name] = task_class
    return task_class


def card_columns(card: ModelCard | None) -> dict[str, list[str]]:
    """Benchmark column -> MTEB task names, as the card maps them (benchmarks resolved to their tasks)."""
    if card is None:
        return {}
    columns: dict[str, list[str]] = {}
    for column, spec in card.mteb_tasks.items():
        columns[column] = _benchmark_tasks(spec) if isinstance(spec, str) else list(spec)
    return columns


def _benchmark_tasks(name: str) -> list[str]:
    import mteb

    return [task.metadata.name for task in mteb.get_benchmark(name).tasks]


def resolve_tasks(names: Sequence[str]) -> list[Any]:
    """mteb task objects for names: locally registered classes first, then mteb's registry."""
    import mteb

    local = [_LOCAL_TASKS[n]() for n in names if n in _LOCAL_TASKS]
    remote = [n for n in names if n not in _LOCAL_TASKS]
    found = list(mteb.get_tasks(tasks=remote, languages=["eng"])) if remote else []
    missing = set(remote) - {t.metadata.name for t in found}
    if missing:
        raise LookupError(f"unknown MTEB task(s): {', '.join(sorted(missing))}")
    return local + found


def run_quality(encoder, card: ModelCard | None, *, tasks: Sequence[str] | None = None,
                max_drop: float = DEFAULT_MAX_DROP, published: dict[str, float] | None = None,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Evaluate ``encoder`` (a ``GigarouterEncoder``) with mteb; scores are x100, as MTEB tables print them."""
    import mteb

    columns = {} if tasks else card_columns(card)
    names = list(dict.fromkeys(tasks or [t for ts in columns.values() for t in ts]))
    if not names:
        raise NoTasks("no MTEB tasks: the card's benchmark table maps no column to tasks (mteb_tasks); "
                      "give some with --tasks")
    task_objects = resolve_tasks(names)
    scores: dict[str, float] = {}
    for number, task in enumerate(task_objects, start=1):
        if progress:
            progress(f"quality: {task.metadata.name} ({number}/{len(task_objects)})")
        result = mteb.evaluate(encoder, task, cache=None, overwrite_strategy="always", show_progress_bar=False,
                               raise_error=True)
        for task_result in result.task_results:
            scores[task_result.task_name] = round(float(task_result.get_score()) * 100, 2)
    measured_columns = {column: round(sum(scores[t] for t in ts) / len(ts), 2)
                        for column, ts in columns.items() if ts and all(t in scores for t in ts)}
    published = published or {}
    drops = {column: round(published[column] - value, 2) for column, value in measured_columns.items()
             if column in published}
    too_low = {c: d for c, d in drops.items() if d > max_drop}
    return {"passed": not too_low and len(scores) == len(names), "tasks": names, "scores": scores,
            "columns": measured_columns, "published": {c: published[c] for c in drops},
            "max_drop": max_drop, "too_low": too_low, "mteb": _mteb_version()}


def _mteb_version() -> str:
    from importlib.metadata import version

    return version("mteb")
