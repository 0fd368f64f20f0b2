"""Reading inputs for ``gigarouter embed`` and writing its outputs (JSONL or .npy)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import typer


@dataclass(frozen=True)
class Record:
    id: str | int
    text: str


def read_inputs(path: Path) -> list[Record]:
    """Plain text: one input per non-empty line. ``.jsonl``: ``{"text": ..., "id": ...}`` or a JSON string per line."""
    records: list[Record] = []
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            records.append(_parse_jsonl(line, lineno, path) if jsonl else Record(id=lineno, text=line))
    if not records:
        raise typer.BadParameter(f"{path} holds no inputs")
    return records


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
    if path.suffix.lower() == ".npy":
        np.save(path, vectors.astype(np.float32))
        return
    with path.open("w", encoding="utf-8") as f:
        for record, vector in zip(records, vectors, strict=True):
            f.write(json.dumps({"id": record.id, "embedding": vector.tolist()}) + "\n")
