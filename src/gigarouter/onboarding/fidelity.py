"""Fidelity: the deployment's vectors against reference vectors recorded by the model's reference code.

A probe file is the golden-vector format of ``tests/fixtures/reference`` (README there): a JSON
object with ``reference`` (what recorded it, with versions), ``script`` or ``call``, and ``cases``,
each with ``texts``, per-text ``input_types`` (or one ``input_type``) and ``instructions`` (``null``
for documents), and ``vectors_one_by_one`` (each text alone; else ``vectors``). A card names its
file with ``reference_probes`` (shipped in ``gigarouter/catalog/probes/``) and the script that
recorded it with ``reference_script``; ``gigarouter onboard --probes FILE`` gives another.

Every text is embedded through the target with the same input type and instruction, and compared
by cosine (normalisation differs between references and servers; direction is the model's). The
step passes when the lowest cosine reaches ``min_cosine``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from gigarouter.onboarding.targets import Target

#: float32 against a float32 reference agrees to ~1e-6; bf16 on a GPU to ~0.999 (docs/benchmarks.md).
DEFAULT_MIN_COSINE = 0.999


class ProbesMissing(LookupError):
    """No reference vectors: the card names none and none were given."""


def card_probes(card) -> Path | None:
    """The probe file a card names, from the package's ``catalog/probes``."""
    name = getattr(card, "reference_probes", None) if card is not None else None
    if not name:
        return None
    path = Path(str(resources.files("gigarouter.catalog").joinpath("probes", name)))
    return path if path.is_file() else None


def load_probes(path: Path) -> dict[str, Any]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list) or not data["cases"]:
        raise ValueError(f"{path}: not a probe file (a JSON object with a non-empty 'cases' list)")
    return data


def probe_inputs(case: dict[str, Any]) -> list[tuple[str, str, str | None, list[float]]]:
    """(text, input_type, instruction, reference vector) per text of a case."""
    texts = case["texts"]
    instructions = case.get("instructions") or [None] * len(texts)
    types = case.get("input_types") or [case.get("input_type", "document")] * len(texts)
    vectors = case.get("vectors_one_by_one") or case["vectors"]
    out = []
    for text, input_type, instruction, vector in zip(texts, types, instructions, vectors, strict=True):
        if input_type not in ("query", "document"):
            # a "mixed" case without per-text types: the reference gave queries an instruction
            input_type = "query" if instruction is not None else "document"
        out.append((text, input_type, instruction if input_type == "query" else None, vector))
    return out


def run_fidelity(target: Target, probes: dict[str, Any], *, min_cosine: float = DEFAULT_MIN_COSINE,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Cosines per case; ``passed`` when every text reaches ``min_cosine``."""
    per_case = []
    lowest = 1.0
    for number, case in enumerate(probes["cases"], start=1):
        inputs = probe_inputs(case)
        cosines = np.empty(len(inputs))
        groups: dict[tuple[str, str | None], list[int]] = {}
        for i, (_, input_type, instruction, _) in enumerate(inputs):
            groups.setdefault((input_type, instruction), []).append(i)
        for (input_type, instruction), indices in groups.items():
            ours = target.embed([inputs[i][0] for i in indices], input_type=input_type,   # type: ignore[arg-type]
                                instruction=instruction).vectors
            reference = np.asarray([inputs[i][3] for i in indices], dtype=np.float32)
            if ours.shape != reference.shape:
                raise ValueError(f"case {case.get('name', number)}: the deployment returned vectors of shape "
                                 f"{ours.shape}, the reference {reference.shape}")
            cosines[indices] = _cosines(ours, reference)
        lowest = min(lowest, float(cosines.min()))
        per_case.append({"name": case.get("name", f"case {number}"), "texts": len(inputs),
                         "min_cosine": float(cosines.min()), "mean_cosine": float(cosines.mean())})
        if progress:
            progress(f"fidelity: case {number}/{len(probes['cases'])}")
    texts = sum(c["texts"] for c in per_case)
    return {"passed": lowest >= min_cosine, "min_cosine": lowest, "threshold": min_cosine, "texts": texts,
            "cases": per_case, "reference": probes.get("reference", ""),
            "script": probes.get("script") or probes.get("call", "")}


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
