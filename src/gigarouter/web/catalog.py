"""What the catalog pages show, computed from the cards (in memory) and this server's routes.

A model is "live" when a route for its card has a provider that can serve it
now and, once it has been onboarded (``gigarouter onboard``, docs/onboarding.md), its
last onboarding run passed: a run in progress shows "benchmarking", a failed one
takes it out of live with the reason shown. A model never onboarded keeps the
first rule alone. Its "API providers" count is the number of healthy providers whose
vectors match the route's reference. Everything here is pure: the routes pass in the
cards, the router, the vote counts and the onboarding records.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gigarouter.catalog.cards import ModelCard
from gigarouter.router.route import Binding, Route
from gigarouter.router.router import Router
from gigarouter.web.formatting import license_name, parameters, task_name

LIVE = "live"
BENCHMARKING = "benchmarking"
COMING_SOON = "coming soon"
STATUSES = (LIVE, BENCHMARKING, COMING_SOON)
SORTS = {
    "popularity": "Most downloaded",
    "wanted": "Most wanted",
    "price": "Price: low to high",
    "price-desc": "Price: high to low",
    "name": "Name",
}


@dataclass(frozen=True)
class Measured:
    """What our last passing onboarding run measured (shown beside the card's published numbers)."""

    run_id: str
    date: datetime
    commit: str | None
    device: str | None
    provider: str
    tasks: tuple[str, ...]
    scores: dict[str, float]            # MTEB task -> main score x100
    columns: dict[str, float]           # card benchmark column -> measured (every task of it ran)
    mteb: str | None
    fidelity_cosine: float | None
    fidelity_texts: int | None
    tokens_per_second: float | None
    query_latency_ms: float | None

    @classmethod
    def from_run(cls, run: Any) -> Measured | None:
        if run is None:
            return None
        quality, fid, speed = (run.results.get(k, {}) for k in ("quality", "fidelity", "speed"))
        return cls(run_id=run.id, date=run.finished_at or run.started_at, commit=run.commit, device=run.device,
                   provider=run.provider, tasks=tuple(quality.get("tasks", ())), scores=dict(quality.get("scores", {})),
                   columns=dict(quality.get("columns", {})), mteb=quality.get("mteb"),
                   fidelity_cosine=fid.get("min_cosine"), fidelity_texts=fid.get("texts"),
                   tokens_per_second=speed.get("tokens_per_second"),
                   query_latency_ms=speed.get("query_latency_ms_p50"))


@dataclass(frozen=True)
class Onboarding:
    """The onboarding records the catalog reads (empty without a database: open mode)."""

    statuses: Mapping[str, Any] = field(default_factory=dict)    # slug -> onboarding.store.ModelStatus
    passed: Mapping[str, Any] = field(default_factory=dict)      # slug -> newest passing Run
    latest: Mapping[str, Any] = field(default_factory=dict)      # slug -> newest Run


NO_ONBOARDING = Onboarding()


@dataclass(frozen=True)
class ModelView:
    card: ModelCard
    status: str                 # LIVE | COMING_SOON
    providers: int              # healthy, matching providers serving this card
    served_name: str            # the `model` value a client sends
    votes: int = 0
    provider_rows: tuple[Binding, ...] = ()   # every provider of its route, whatever its state
    fingerprint: str | None = None            # the route's vector space (x-gigarouter-fingerprint)
    status_reason: str | None = None          # why it is not live (its last onboarding run failed)
    measured: Measured | None = None          # our numbers, from the last passing onboarding run
    charged_price: float | None = None        # live: what a request is billed per 1M tokens (default route)

    @property
    def slug(self) -> str:
        return self.card.slug

    @property
    def price(self) -> float | None:
        """The price to show: what is charged when live, else the card's (estimated) one."""
        return self.charged_price if self.live and self.charged_price is not None else self.card.price_per_million_usd

    @property
    def price_estimated(self) -> bool:
        return not (self.live and self.charged_price is not None) and self.card.price_estimated

    @property
    def non_commercial(self) -> bool:
        """A license that forbids commercial use (cc-by-nc-*): shown next to a price that is charged."""
        return "-nc" in self.card.license.lower()

    @property
    def live(self) -> bool:
        return self.status == LIVE


def live_route(router: Router | None, card: ModelCard) -> Route | None:
    """The route serving this card with a provider that can answer now, if any."""
    routes = route_of(router, card)
    return next((r for r in routes if r.healthy()), None)


def route_of(router: Router | None, card: ModelCard) -> list[Route]:
    if router is None:
        return []
    return [r for r in router.routes if r.card is not None and r.card.slug == card.slug]


def view(card: ModelCard, router: Router | None, votes: Mapping[str, int],
         onboarding: Onboarding = NO_ONBOARDING) -> ModelView:
    routes = route_of(router, card)
    live = next((r for r in routes if r.healthy()), None)
    fingerprinted = next((r for r in ([live] if live else []) + routes if r.fingerprint), None)
    status, reason = onboarded_status(onboarding.statuses.get(card.slug), served=live is not None)
    return ModelView(card=card, status=status,
                     providers=sum(len(r.healthy()) for r in routes),
                     served_name=live.name if live else card.slug, votes=votes.get(card.slug, 0),
                     provider_rows=tuple(b for r in routes for b in r.bindings),
                     fingerprint=fingerprinted.fingerprint if fingerprinted else None,
                     status_reason=reason, measured=Measured.from_run(onboarding.passed.get(card.slug)),
                     charged_price=min((b.price_per_million_usd for b in live.healthy()), default=None)
                     if live else None)


def onboarded_status(record: Any, *, served: bool) -> tuple[str, str | None]:
    """(status, reason not live): a healthy provider here and, once onboarded, a last run that passed."""
    if record is None or record.status == "live":
        return (LIVE if served else COMING_SOON), None
    if record.status == "benchmarking":
        return BENCHMARKING, None
    return COMING_SOON, record.reason


def views(cards: Iterable[ModelCard], router: Router | None, votes: Mapping[str, int],
          onboarding: Onboarding = NO_ONBOARDING) -> list[ModelView]:
    return [view(card, router, votes, onboarding) for card in cards]


@dataclass(frozen=True)
class Filters:
    status: str = ""
    license: str = ""
    task: str = ""
    sort: str = "popularity"

    @classmethod
    def parse(cls, *, status: str | None, license: str | None, task: str | None, sort: str | None) -> Filters:
        return cls(status=status if status in STATUSES else "", license=(license or "").strip(),
                   task=(task or "").strip(), sort=sort if sort in SORTS else "popularity")


def select(models: Sequence[ModelView], filters: Filters) -> list[ModelView]:
    """Filter by status, license and task; then sort (ties broken by name, so the order is stable)."""
    kept = [m for m in models
            if (not filters.status or m.status == filters.status)
            and (not filters.license or m.card.license == filters.license)
            and (not filters.task or task_name(m.card.task) == task_name(filters.task))]
    by_name = sorted(kept, key=lambda m: m.card.display_name.lower())
    if filters.sort == "name":
        return by_name
    if filters.sort == "wanted":
        return sorted(by_name, key=lambda m: -m.votes)
    if filters.sort in ("price", "price-desc"):
        priced = [m for m in by_name if m.price is not None]
        unpriced = [m for m in by_name if m.price is None]
        priced.sort(key=lambda m: m.price, reverse=filters.sort == "price-desc")
        return priced + unpriced    # models with no price yet come last either way
    return sorted(by_name, key=lambda m: -(m.card.downloads_per_month or 0))


def most_wanted(models: Sequence[ModelView], *, limit: int = 5) -> list[ModelView]:
    """Models that are not live yet, by votes (only those with at least one vote)."""
    wanted = [m for m in models if not m.live and m.votes > 0]
    return sorted(wanted, key=lambda m: (-m.votes, m.card.display_name.lower()))[:limit]


def facets(models: Sequence[ModelView]) -> dict[str, list[str]]:
    """The filter choices: license ids (shown by their SPDX names) and task names, each in one format."""
    return {"license": sorted({m.card.license for m in models}),
            "task": sorted({task_name(m.card.task) for m in models})}


def related(card: ModelCard, cards: Mapping[str, ModelCard]) -> list[ModelCard]:
    return [cards[slug] for slug in card.related if slug in cards and slug != card.slug]


def parse_slugs(values: Iterable[str], cards: Mapping[str, ModelCard]) -> tuple[list[ModelCard], list[str]]:
    """``?models=a,b&models=c`` -> the known cards in order (no repeats) and the unknown names."""
    found: list[ModelCard] = []
    unknown: list[str] = []
    by_name = {name.lower(): card for card in cards.values() for name in card.names}
    for value in values:
        for name in (part.strip() for part in value.split(",")):
            if not name:
                continue
            card = by_name.get(name.lower())
            if card is None:
                unknown.append(name)
            elif card not in found:
                found.append(card)
    return found, unknown


def benchmark_columns(cards: Sequence[ModelCard]) -> list[str]:
    columns: list[str] = []
    for card in cards:
        for column in card.benchmark_columns:
            if column not in columns:
                columns.append(column)
    return columns


def measured_columns(models: Sequence[ModelView]) -> list[str]:
    """Compare's measured rows: each benchmark column or MTEB task some chosen model was measured on."""
    columns: list[str] = []
    for m in models:
        if m.measured is None:
            continue
        for name in (*m.measured.columns, *m.measured.scores):
            if name not in columns:
                columns.append(name)
    return columns


def measured_value(m: ModelView, name: str) -> float | None:
    if m.measured is None:
        return None
    return m.measured.columns.get(name, m.measured.scores.get(name))


def benchmark_scores(card: ModelCard, cards: Iterable[ModelCard]) -> dict[str, float]:
    """A model's reported scores: its own card's row first, then rows about it on other cards' tables."""
    names = {n.lower() for n in (card.display_name, card.slug, card.hub_id, card.hub_id.split("/")[-1], *card.aliases)}
    scores: dict[str, float] = {}
    for source in (card, *(c for c in cards if c.slug != card.slug)):
        for row in source.benchmarks:
            if row.model.lower() in names:
                for column, value in row.scores.items():
                    scores.setdefault(column, value)
    return scores


def spec_rows(card: ModelCard) -> list[tuple[str, str]]:
    """The specs table: the card's standard facts, then its extra rows.

    Task, parameters and license are shown in one format on every page; an extra row that
    restates one of them (a page's "License: MIT" beside the card's ``mit``) keeps that format.
    """
    formatted = {"Task": task_name(card.task), "Parameters": parameters(card.parameters),
                 "License": license_name(card.license)}
    rows = {"Task": formatted["Task"], "Architecture": card.architecture, "Parameters": formatted["Parameters"],
            "License": formatted["License"], "Max Sequence Length": f"{card.max_tokens} tokens",
            "Embedding Dimensions": str(card.dimensions)}
    for name, value in card.extra_specs.items():
        same = next((k for k in rows if k.lower() == name.lower()), name)
        rows[same] = formatted.get(same, value)
    return list(rows.items())


def example_model(router: Router | None) -> str:
    """A model name for examples: the first live route, else the embedded default."""
    from gigarouter.settings import DEFAULT_MODEL_NAME

    for route in router.routes if router else ():
        if route.healthy():
            return route.name
    return DEFAULT_MODEL_NAME
