"""What the catalog pages show, computed from the cards (in memory) and this server's routes.

A model is "live" when a route for its card has a provider that can serve it
now; its "API providers" count is the number of healthy providers whose vectors
match the route's reference. Everything here is pure: the routes pass in the
cards, the router and the vote counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gigarouter.catalog.cards import ModelCard
from gigarouter.router.route import Binding, Route
from gigarouter.router.router import Router
from gigarouter.web.formatting import license_name, parameters, task_name

LIVE = "live"
COMING_SOON = "coming soon"
STATUSES = (LIVE, COMING_SOON)
SORTS = {
    "popularity": "Most downloaded",
    "wanted": "Most wanted",
    "price": "Price: low to high",
    "price-desc": "Price: high to low",
    "name": "Name",
}


@dataclass(frozen=True)
class ModelView:
    card: ModelCard
    status: str                 # LIVE | COMING_SOON
    providers: int              # healthy, matching providers serving this card
    served_name: str            # the `model` value a client sends
    votes: int = 0
    provider_rows: tuple[Binding, ...] = ()   # every provider of its route, whatever its state
    fingerprint: str | None = None            # the route's vector space (x-gigarouter-fingerprint)

    @property
    def slug(self) -> str:
        return self.card.slug

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


def view(card: ModelCard, router: Router | None, votes: Mapping[str, int]) -> ModelView:
    routes = route_of(router, card)
    live = next((r for r in routes if r.healthy()), None)
    fingerprinted = next((r for r in ([live] if live else []) + routes if r.fingerprint), None)
    return ModelView(card=card, status=LIVE if live else COMING_SOON,
                     providers=sum(len(r.healthy()) for r in routes),
                     served_name=live.name if live else card.slug, votes=votes.get(card.slug, 0),
                     provider_rows=tuple(b for r in routes for b in r.bindings),
                     fingerprint=fingerprinted.fingerprint if fingerprinted else None)


def views(cards: Iterable[ModelCard], router: Router | None, votes: Mapping[str, int]) -> list[ModelView]:
    return [view(card, router, votes) for card in cards]


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
        priced = [m for m in by_name if m.card.price_per_million_usd is not None]
        unpriced = [m for m in by_name if m.card.price_per_million_usd is None]
        priced.sort(key=lambda m: m.card.price_per_million_usd, reverse=filters.sort == "price-desc")
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
