"""Reading inputs for ``gigarouter embed`` and writing its outputs (JSONL or .npy).

Blank lines (empty or whitespace only) are not inputs: they are skipped and their
line numbers returned, so the command can report them. Each record keeps its line
number as its id (JSONL inputs may give their own), so JSONL outputs point back at
the input line; row i of a .npy output is the i-th non-blank line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import typer


@dataclass(frozen=True)
class Record:
    id: str | int
    text: str


#: What ``--out`` may end with; anything else is refused before any work is done.
OUTPUT_SUFFIXES = (".npy", ".jsonl", ".ndjson")


def read_inputs(path: Path) -> tuple[list[Record], list[int]]:
    """The records and the line numbers of the blank lines that were skipped.

    Plain text: one input per line. ``.jsonl``: ``{"text": ..., "id": ...}`` or a JSON string per line.
    """
    records: list[Record] = []
    blank: list[int] = []
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    try:
        with path.open(encoding="utf-8", newline="") as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    blank.append(lineno)
                    continue
                records.append(_parse_jsonl(line, lineno, path) if jsonl else Record(id=lineno, text=line))
    except UnicodeDecodeError as exc:
        raise typer.BadParameter(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not records:
        raise typer.BadParameter(f"{path} holds no inputs")
    return records, blank


def check_output(path: Path) -> None:
    """Refuse an output that could not be written, before anything is embedded."""
    if path.is_dir():
        raise typer.BadParameter(f"{path} is a directory", param_hint="--out")
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise typer.BadParameter(f"{path}: unknown output type {path.suffix or '(no extension)'!r}; "
                                 f"use {', '.join(OUTPUT_SUFFIXES)}", param_hint="--out")
    parent = path.parent
    if not parent.is_dir():
        raise typer.BadParameter(f"the directory {parent} does not exist", param_hint="--out")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise typer.BadParameter(f"{path} cannot be written (permission denied)", param_hint="--out")


def _parse_jsonl(line: str, lineno: int, path: Path) -> Record:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"{path}:{lineno}: not JSON ({exc.msg})") from None
    if isinstance(value, str):
        return Record(id=lineno, text=value)
    if isinstance(value, dict) and isinstance(value.get("text"), str) and value["text"]:
        return Record(id=value.get("id", lineno), text=value["text"])
    raise typer.BadParameter(f"{path}:{lineno}: expected a string or an object with a non-empty \"text\"")


def write_outputs(path: Path, records: list[Record], vectors: np.ndarray) -> None:
    """``.npy``: one row per record (float32, or the compact type's int8/uint8); ``.jsonl`` / ``.ndjson``:
    ``{"id", "embedding"}`` per line (floats, or integers for a compact type)."""
    if path.suffix.lower() == ".npy":
        np.save(path, vectors if vectors.dtype.kind in "iu" else vectors.astype(np.float32))
        return
    with path.open("w", encoding="utf-8") as f:
        for record, vector in zip(records, vectors, strict=True):
            f.write(json.dumps({"id": record.id, "embedding": vector.tolist()}) + "\n")
