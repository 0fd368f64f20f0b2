"""Model cards: everything the catalog knows about a model, stored as one TOML file each.

Cards live in ``catalog/cards/<slug>.toml``. They are facts about a model
(names, license, specs, benchmarks, FAQ, instructions) and hold no runtime
state; whether a model is live comes from the deployments in this server.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from gigarouter.recipes.base import Instructions

if TYPE_CHECKING:
    from gigarouter.settings import ModelConfig


@dataclass(frozen=True)
class BenchmarkRow:
    model: str
    scores: dict[str, float]          # column -> score, e.g. {"Retrieval (15 datasets)": 60.2}


@dataclass(frozen=True)
class FaqEntry:
    question: str
    answer: str


@dataclass(frozen=True)
class ModelCard:
    slug: str                          # URL slug and default served name
    display_name: str
    hub_id: str
    summary: str                       # one line
    about: str                         # markdown-ish paragraphs
    license: str
    task: str
    architecture: str
    parameters: str                    # as the page states it, e.g. "7B"
    parameters_count: int              # for sorting and cost maths
    max_tokens: int
    dimensions: int
    recipe: str
    published: str = ""                # e.g. "2024-05"
    updated: str = ""
    price_per_million_usd: float | None = None
    price_estimated: bool = True
    downloads_per_month: int | None = None
    best_for: tuple[str, ...] = ()
    benchmark_columns: tuple[str, ...] = ()
    benchmarks: tuple[BenchmarkRow, ...] = ()
    benchmark_note: str = ""
    faq: tuple[FaqEntry, ...] = ()
    related: tuple[str, ...] = ()      # slugs
    aliases: tuple[str, ...] = ()
    default_query_instruction: str | None = None
    template: str | None = None        # llm2vec's input template ("inst" | "none"), part of the model's identity
    task_instructions: dict[str, str] = field(default_factory=dict)
    extra_specs: dict[str, str] = field(default_factory=dict)  # further rows of the specs table
    status: str = ""                   # as the model page states it, e.g. "coming soon"
    status_note: str = ""              # the page's paragraph under the status
    api_providers: int | None = None   # providers serving it, as the page counted them
    # Benchmark column -> the MTEB tasks behind it (a list of task names, or an mteb benchmark's name):
    # what `gigarouter onboard` evaluates to put a measured number beside the published one.
    mteb_tasks: dict[str, Any] = field(default_factory=dict)
    # Reference probe vectors (golden format, gigarouter/catalog/probes/<file>) recorded by the model's
    # reference implementation, and the script that recorded them: onboarding's fidelity step.
    reference_probes: str | None = None
    reference_script: str | None = None

    @property
    def instructions(self) -> Instructions:
        return Instructions(default_query=self.default_query_instruction, named=self.task_instructions or None)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.slug, self.hub_id, *self.aliases)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelCard:
        raw = dict(raw)
        raw["benchmarks"] = tuple(BenchmarkRow(model=b["model"], scores=dict(b["scores"]))
                                  for b in raw.get("benchmarks", ()))
        raw["faq"] = tuple(FaqEntry(**f) for f in raw.get("faq", ()))
        for key in ("best_for", "benchmark_columns", "related", "aliases"):
            if key in raw:
                raw[key] = tuple(raw[key])
        return cls(**raw)


@cache
def load_cards() -> dict[str, ModelCard]:
    """Every card shipped with the package, by slug."""
    cards: dict[str, ModelCard] = {}
    for entry in resources.files("gigarouter.catalog").joinpath("cards").iterdir():
        if entry.name.endswith(".toml"):
            card = ModelCard.from_dict(tomllib.loads(entry.read_text(encoding="utf-8")))
            cards[card.slug] = card
    return cards


def card_for_model(config: ModelConfig) -> ModelCard | None:
    """A configured model's card: ``card`` if given; else the one recorded by ``models merge`` in a
    local ``weights`` directory (a merged checkpoint served under a new name keeps its card);
    else the card whose slug, Hub id or alias is the model's name, an alias or ``weights``."""
    explicit = find_card(config.card) if config.card else None
    if explicit is not None:
        return explicit
    from gigarouter.engine.sources import read_merge_record

    recorded = read_merge_record(config.weights).get("card")
    return (find_card(recorded) if recorded else None) or find_card(config.name, config.weights, *config.aliases)


def find_card(*names: str | None) -> ModelCard | None:
    """The card whose slug, Hub id or alias matches any of ``names``."""
    wanted = {n.lower() for n in names if n}
    for card in load_cards().values():
        if wanted & {n.lower() for n in card.names}:
            return card
    return None
