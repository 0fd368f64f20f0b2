"""The web's pure parts: formats, catalog filtering and comparison, charts, security helpers, the store."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from gigarouter.accounts import migrations
from gigarouter.accounts.db import make_engine, transaction
from gigarouter.accounts.store import AccountStore
from gigarouter.accounts.tables import utcnow
from gigarouter.catalog.cards import BenchmarkRow, ModelCard
from gigarouter.web import catalog, charts, formatting, security
from gigarouter.web.limits import SlidingWindow
from gigarouter.web.routes.auth import safe_next
from gigarouter.web.users import EmailTaken, WebStore

# -- formatting ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "estimated", "text"), [
    (0.008, True, "~$0.008"), (0.008, False, "$0.008"), (0.01, False, "$0.01"), (1.5, False, "$1.50"),
    (0.0125, False, "$0.0125"), (None, False, "—"),
])
def test_price(value, estimated, text) -> None:
    assert formatting.price(value, estimated=estimated) == text


@pytest.mark.parametrize(("micro", "text"), [
    (1_000_000, "$1.00"), (999_978, "$0.999978"), (3, "$0.000003"), (0, "$0.00"), (-5, "-$0.000005"),
    (1_234_500_000, "$1,234.50"),
])
def test_micro_dollars_are_exact(micro, text) -> None:
    assert formatting.micro_dollars(micro) == text


@pytest.mark.parametrize(("value", "text"), [
    (14_700, "14.7K"), (24_700, "24.7K"), (14_000, "14K"), (950, "950"), (1_260_000, "1.3M"), (None, "—"),
])
def test_compact_counts(value, text) -> None:
    assert formatting.compact(value) == text


@pytest.mark.parametrize(("value", "text"), [
    (0.94, "0.9 ms"), (9.96, "10 ms"), (12.34, "12 ms"), (1234.5, "1,234 ms"), (None, "—"),
])
def test_latency_ms(value, text) -> None:
    assert formatting.latency_ms(value) == text


@pytest.mark.parametrize(("value", "text"), [
    (1.0, "100%"), (0.9999, "99.9%"), (0.9987, "99.9%"), (0.5, "50%"), (0.0, "0%"), (0.12345, "12.3%"), (None, "—"),
])
def test_percent(value, text) -> None:
    assert formatting.percent(value) == text


@pytest.mark.parametrize(("value", "text"), [
    ("2024-05", "May 2024"), ("2024-06-30", "Jun 2024"), ("soon", "soon"), ("2024-13", "2024-13"), ("", ""),
])
def test_month(value, text) -> None:
    assert formatting.month(value) == text


def test_prose_escapes_card_text_and_knows_headings_lists_and_code() -> None:
    html = str(formatting.prose("# Key <b>strengths</b>\n\nUses `x < y` and **bold**.\n\n- one\n- two"))
    assert "<h3>Key &lt;b&gt;strengths&lt;/b&gt;</h3>" in html
    assert "<p>Uses <code>x &lt; y</code> and <strong>bold</strong>.</p>" in html
    assert "<ul><li>one</li><li>two</li></ul>" in html
    assert str(formatting.prose("# Title\nfirst line\nsecond")) == "<h3>Title</h3>\n<p>first line second</p>"


# -- catalog ---------------------------------------------------------------------------------------

def card(slug: str, **kw) -> ModelCard:
    base = dict(slug=slug, display_name=slug.title(), hub_id=f"org/{slug}", summary="s", about="a", license="mit",
                task="Text embedding", architecture="x", parameters="7B", parameters_count=7, max_tokens=512,
                dimensions=8, recipe="e5")
    return ModelCard(**{**base, **kw})


def views(*cards: ModelCard, live: tuple[str, ...] = (), votes: dict[str, int] | None = None):
    return [catalog.ModelView(card=c, status=catalog.LIVE if c.slug in live else catalog.COMING_SOON,
                              providers=int(c.slug in live), served_name=c.slug, votes=(votes or {}).get(c.slug, 0))
            for c in cards]


def test_filter_and_sort_the_catalog() -> None:
    models = views(card("a", price_per_million_usd=0.02, downloads_per_month=10, license="apache-2.0"),
                   card("b", price_per_million_usd=0.01, downloads_per_month=30),
                   card("c", downloads_per_month=20, task="Reranking"),
                   live=("a",), votes={"b": 2, "c": 5})
    slugs = lambda f: [m.slug for m in catalog.select(models, f)]  # noqa: E731
    assert slugs(catalog.Filters()) == ["b", "c", "a"]                              # most downloaded
    assert slugs(catalog.Filters(sort="price")) == ["b", "a", "c"]                  # unpriced last
    assert slugs(catalog.Filters(sort="price-desc")) == ["a", "b", "c"]
    assert slugs(catalog.Filters(sort="wanted")) == ["c", "b", "a"]
    assert slugs(catalog.Filters(status=catalog.LIVE)) == ["a"]
    assert slugs(catalog.Filters(license="mit", sort="name")) == ["b", "c"]
    assert slugs(catalog.Filters(task="Reranking")) == ["c"]
    assert catalog.Filters.parse(status="nope", license=None, task=None, sort="bogus") == catalog.Filters()
    assert [m.slug for m in catalog.most_wanted(models)] == ["c", "b"]              # live "a" is not wanted


def test_compare_parses_names_and_finds_scores_on_other_cards() -> None:
    cols = ("Retrieval", "Average")
    linq = card("linq", display_name="Linq", benchmark_columns=cols, benchmarks=(
        BenchmarkRow("Linq", {"Retrieval": 60.2, "Average": 68.2}), BenchmarkRow("e5-mistral", {"Retrieval": 56.9})))
    e5 = card("e5-mistral", display_name="E5 Mistral")
    cards = {c.slug: c for c in (linq, e5)}
    found, unknown = catalog.parse_slugs(["linq,ORG/E5-MISTRAL", "nope", "linq"], cards)
    assert [c.slug for c in found] == ["linq", "e5-mistral"] and unknown == ["nope"]
    assert catalog.benchmark_scores(e5, cards.values()) == {"Retrieval": 56.9}
    assert catalog.benchmark_scores(linq, cards.values()) == {"Retrieval": 60.2, "Average": 68.2}
    assert catalog.benchmark_columns([e5, linq]) == ["Retrieval", "Average"]


def test_spec_rows_let_a_card_restate_a_standard_row() -> None:
    rows = dict(catalog.spec_rows(card("x", extra_specs={"license": "MIT", "Pooling": "mean"})))
    assert rows["License"] == "MIT" and rows["Pooling"] == "mean" and rows["Max Sequence Length"] == "512 tokens"


# -- charts ----------------------------------------------------------------------------------------

def test_chart_axis_tops_are_round_numbers() -> None:
    assert [charts.nice_max(v) for v in (0, 0.4, 7, 12, 120, 260, 4_100)] == [1, 1, 10, 20, 200, 500, 5_000]


def test_charts_are_accessible_svg_with_escaped_labels() -> None:
    svg = str(charts.columns([("May 1", 10), ("May 2", 0), ("<x>", 5)], chart_id="c", title="T", desc="D",
                             unit="tokens"))
    assert svg.count("<rect") == 3 and 'role="img"' in svg and 'aria-labelledby="c-t c-d"' in svg
    assert "&lt;x&gt;: 5 tokens" in svg and "<x>" not in svg
    assert str(charts.bars([], chart_id="e", title="T", desc="none", unit="tokens")).count("<rect") == 0


# -- security --------------------------------------------------------------------------------------

def test_passwords_hash_and_verify() -> None:
    stored = security.hash_password("a long enough password")
    assert stored.startswith("$argon2id$")
    assert security.verify_password(stored, "a long enough password")
    assert not security.verify_password(stored, "another password")
    assert not security.verify_password(None, "a long enough password")
    assert not security.verify_password("not a hash", "x")


def test_csrf_tokens_bind_to_the_browser_cookie() -> None:
    key = security.web_key(b"server secret")
    token = security.csrf_for(key, "cookie-a")
    assert security.csrf_valid(key, "cookie-a", token)
    assert not security.csrf_valid(key, "cookie-b", token)
    assert not security.csrf_valid(security.web_key(b"other"), "cookie-a", token)
    assert not security.csrf_valid(key, None, token) and not security.csrf_valid(key, "cookie-a", None)


def test_form_checks() -> None:
    assert security.email_problem("a@example.com") is None
    assert security.email_problem("nope") and security.email_problem("a@b")
    assert security.password_problem("short") and security.password_problem("x" * 2000)
    assert security.password_problem("long enough!") is None


@pytest.mark.parametrize(("target", "safe"), [
    ("/models/x#want", "/models/x#want"), ("//evil.example", "/dashboard"), ("https://evil.example", "/dashboard"),
    ("/\\evil.example", "/dashboard"), ("", "/dashboard"), (None, "/dashboard"),
])
def test_next_stays_on_site(target, safe) -> None:
    assert safe_next(target) == safe


def test_sliding_window() -> None:
    window = SlidingWindow(2, 60.0)
    assert window.allow("k", now=0.0) and window.allow("k", now=1.0)
    assert not window.allow("k", now=2.0)
    assert window.allow("other", now=2.0)
    assert window.allow("k", now=61.0)


# -- the store -------------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'web.db'}"
    migrations.upgrade(url)
    engine = make_engine(url, pool_size=2)
    try:
        yield WebStore(engine), AccountStore(engine, b"x" * 32)
    finally:
        engine.dispose()


def test_migrations_have_one_head_and_create_the_web_tables(store) -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(migrations.HERE))
    heads = ScriptDirectory.from_config(config).get_heads()
    assert len(heads) == 1, f"the accounts migrations have more than one head: {heads}"
    web, _ = store
    assert web.vote_counts() == {}


def test_users_sessions_and_votes(store) -> None:
    web, accounts = store
    account, _ = accounts.create_account(email="a@example.com", key=None)
    with transaction(web.engine) as conn:
        user = web.add_user(conn, user_id="wu_1", email="a@example.com", password_hash="h", account_id=account.id)
    with pytest.raises(EmailTaken), transaction(web.engine) as conn:
        web.add_user(conn, user_id="wu_2", email="a@example.com", password_hash="h", account_id=account.id)
    assert web.user_by_email("a@example.com").password_hash == "h"

    web.start_session(user.id, "token-1")
    assert web.session_user("token-1") == user
    assert web.session_user("token-2") is None
    assert web.session_user("token-1", now=utcnow() + timedelta(days=security.SESSION_DAYS + 1)) is None
    web.end_session("token-1")
    assert web.session_user("token-1") is None

    assert web.vote(user.id, "linq") and not web.vote(user.id, "linq")
    assert web.vote(user.id, "e5")
    assert web.vote_counts() == {"linq": 1, "e5": 1} and web.votes_of(user.id) == {"linq", "e5"}
    assert web.unvote(user.id, "e5") and not web.unvote(user.id, "e5")
    assert web.vote_counts() == {"linq": 1}


def test_spraying_new_keys_cannot_reset_a_count() -> None:
    window = SlidingWindow(3, 300.0, max_keys=100, slots=64)
    for t in range(3):
        assert window.allow("email:victim@example.com", now=float(t))
    assert not window.allow("email:victim@example.com", now=3.0)
    for i in range(20_000):                      # an attacker's flood of fresh keys, all active
        window.allow(f"email:spray{i}@example.com", now=4.0 + i * 0.001)
    assert len(window) <= 100                    # memory stays bounded...
    assert not window.allow("email:victim@example.com", now=30.0)   # ...and the victim's count survived
    # Its bucket also holds the flood's events (at most 3): under a flood the limiter errs towards
    # refusing. Once the flood's own window has passed, the victim is free again.
    assert window.allow("email:victim@example.com", now=4.0 + 20.0 + 300.0 + 0.01)


def test_eviction_never_counts_an_event_twice() -> None:
    window = SlidingWindow(3, 60.0, max_keys=1, slots=1)
    assert window.allow("a", now=0.0) and window.allow("a", now=1.0)
    for round_ in range(5):                       # "a" goes to the bucket and comes back, again and again
        window.allow(f"other{round_}", now=2.0 + round_)
        if round_ == 0:
            assert window.allow("a", now=2.5)        # its third event: one left in the bucket's merged copy
    assert not window.allow("a", now=10.0)
    assert window.allow("fresh", now=61.0)            # the window passed: everyone is free again


# -- one format per fact ---------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "shown"), [
    ("7 billion", "7B"), ("7B", "7B"), ("22.7M", "22.7M"), ("1.5 Billion", "1.5B"), ("335 million", "335M"),
    ("110m", "110M"), ("about 7B", "about 7B"), (None, "—"),
])
def test_parameters_read_one_way(raw, shown) -> None:
    assert formatting.parameters(raw) == shown


@pytest.mark.parametrize(("raw", "shown"), [
    ("mit", "MIT"), ("MIT", "MIT"), ("apache-2.0", "Apache-2.0"), ("cc-by-nc-4.0", "CC-BY-NC-4.0"),
    ("some-custom-license", "some-custom-license"), (None, "—"),
])
def test_licenses_read_as_spdx_ids(raw, shown) -> None:
    assert formatting.license_name(raw) == shown


@pytest.mark.parametrize(("raw", "shown"), [
    ("Text Embedding", "Text embedding"), ("Text embedding & retrieval", "Text embedding & retrieval"),
    ("sentence embedding", "Sentence embedding"), ("MTEB Retrieval", "MTEB retrieval"),
])
def test_tasks_read_in_sentence_case(raw, shown) -> None:
    assert formatting.task_name(raw) == shown


def test_every_card_reads_in_one_format() -> None:
    import re

    from gigarouter.catalog.cards import load_cards

    for card in load_cards().values():
        assert re.fullmatch(r"\d+(\.\d+)?[KMBT]", formatting.parameters(card.parameters)), card.parameters
        assert formatting.license_name(card.license) != card.license or card.license.isupper(), card.license
        rows = dict(catalog.spec_rows(card))
        assert rows["License"] == formatting.license_name(card.license)     # an extra spec restating it too
        assert rows["Task"] == formatting.task_name(card.task) == formatting.task_name(rows["Task"])


def test_task_filter_matches_whatever_case_the_card_uses() -> None:
    models = views(card("a", task="Text Embedding"), card("b", task="Text embedding"), card("c", task="Other"))
    assert catalog.facets(models)["task"] == ["Other", "Text embedding"]
    text_embedding = catalog.Filters.parse(status=None, license=None, task="Text embedding", sort="name")
    chosen = catalog.select(models, text_embedding)
    assert [m.slug for m in chosen] == ["a", "b"]


def test_charts_have_a_narrow_drawing_for_phones() -> None:
    points = [(f"Nov {d}", float(d)) for d in range(1, 31)]
    wide = charts.columns(points, chart_id="w", title="t", desc="d", unit="tokens")
    narrow = charts.columns(points, chart_id="n", title="t", desc="d", unit="tokens", width=360, label_every=7,
                            variant="narrow")
    assert 'class="chart wide"' in wide and 'class="chart narrow"' in narrow and 'viewBox="0 0 360 220"' in narrow
    labels = [x for x in narrow.split("text-anchor=\"middle\">")[1:]]
    assert [x.split("<")[0] for x in labels] == ["Nov 1", "Nov 8", "Nov 15", "Nov 22", "Nov 29"]  # Nov 30 too close
    bars = charts.bars([("a-very-long-model-name-for-a-phone", 5.0)], chart_id="b", title="t", desc="d",
                       unit="tokens", width=360, label_w=130, value_w=50, variant="narrow")
    assert ">a-very-long-model…<" in bars and "a-very-long-model-name-for-a-phone: 5 tokens" in bars


def test_flash_notes_are_read_once_and_expire() -> None:
    from gigarouter.web.flash import FlashStore

    now = [0.0]
    store = FlashStore(ttl_s=10, max_notes=2, clock=lambda: now[0])
    store.put("session-a", "new-key", "k1")
    assert store.take("session-b", "new-key") is None and store.take("session-a", "other") is None
    assert store.take("session-a", "new-key") == "k1" and store.take("session-a", "new-key") is None
    store.put("session-a", "new-key", "k2")
    now[0] = 11
    assert store.take("session-a", "new-key") is None                     # expired
    for i in range(3):
        store.put(f"s{i}", "new-key", i)
    assert store.take("s0", "new-key") is None and store.take("s2", "new-key") == 2   # at most max_notes kept
