"""How catalog facts read on a page: prices, download counts, month dates, a little markdown.

Pure functions, registered as Jinja filters by ``templating.py`` and tested on
their own. The seed pages fix the formats: ``~$0.008``, ``14.7K``, ``May 2024``.
"""

from __future__ import annotations

import re
from datetime import date

from markupsafe import Markup, escape

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def price(value: float | None, *, estimated: bool = False) -> str:
    """``0.008`` -> ``$0.008`` (``~$0.008`` when estimated); at least two decimals, no trailing zeros past them."""
    if value is None:
        return "—"
    text = f"{value:.6f}".rstrip("0")
    whole, _, frac = text.partition(".")
    text = f"{whole}.{frac.ljust(2, '0')}"
    return f"{'~' if estimated else ''}${text}"


def micro_dollars(value: int | None) -> str:
    """Integer micro-dollars, exact: ``1_000_000`` -> ``$1.00``, ``999_978`` -> ``$0.999978``."""
    if value is None:
        return "—"
    whole, frac = divmod(abs(value), 1_000_000)
    digits = f"{frac:06d}".rstrip("0").ljust(2, "0")
    return f"{'-' if value < 0 else ''}${whole:,}.{digits}"


def compact(value: int | None) -> str:
    """``14700`` -> ``14.7K``, ``1_250_000`` -> ``1.3M``, ``950`` -> ``950``."""
    if value is None:
        return "—"
    for size, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "K")):
        if abs(value) >= size:
            text = f"{value / size:.1f}".removesuffix(".0")
            return f"{text}{suffix}"
    return str(value)


def month(value: str | None) -> str:
    """``2024-05`` or ``2024-05-29`` -> ``May 2024``; anything else is shown as given."""
    if not value:
        return ""
    match = re.fullmatch(r"(\d{4})-(\d{2})(?:-\d{2})?", value.strip())
    if not match or not 1 <= int(match.group(2)) <= 12:
        return value
    return f"{_MONTHS[int(match.group(2)) - 1]} {match.group(1)}"


def day(value: date | str) -> str:
    """A date as ``May 29``."""
    if isinstance(value, str):
        value = date.fromisoformat(value[:10])
    return f"{_MONTHS[value.month - 1]} {value.day}"


def thousands(value: int | float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,}"


def score(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def latency_ms(value: float | None) -> str:
    """Milliseconds: ``3.456`` -> ``3.5 ms``; from 10 ms on, whole ones: ``12.34`` -> ``12 ms``,
    ``1234.6`` -> ``1,235 ms``."""
    if value is None:
        return "—"
    tenths = f"{value:.1f}"
    return f"{tenths} ms" if float(tenths) < 10 else f"{round(value):,} ms"


def percent(value: float | None) -> str:
    """A share as a percent: ``1.0`` -> ``100%``, ``0.9987`` -> ``99.9%``; never rounds up to 100%."""
    if value is None:
        return "—"
    text = f"{value * 100:.1f}"
    if text == "100.0" and value < 1:
        text = "99.9"
    return f"{text.removesuffix('.0')}%"


_INLINE_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")


def _inline(text: str) -> str:
    html = str(escape(text))
    html = _INLINE_CODE.sub(r"<code>\1</code>", html)
    return _BOLD.sub(r"<strong>\1</strong>", html)


def prose(text: str | None, *, heading_level: int = 3) -> Markup:
    """The cards' markdown-ish ``about``: blank-line paragraphs, ``#`` headings, ``-`` lists, `code`, **bold**.

    Everything is escaped first, so card text can never inject markup.
    """
    blocks = [b.strip() for b in re.split(r"\n\s*\n", (text or "").strip()) if b.strip()]
    out: list[str] = []
    for block in blocks:
        lines = [line.strip() for line in block.splitlines()]
        heading = _HEADING.match(lines[0])
        if heading:
            out.append(_heading(heading.group(2), heading_level))
            lines = lines[1:]
        if not lines:
            continue
        if all(line.startswith(("- ", "* ")) for line in lines):
            items = "".join(f"<li>{_inline(line[2:])}</li>" for line in lines)
            out.append(f"<ul>{items}</ul>")
        else:
            out.append(f"<p>{_inline(' '.join(lines))}</p>")
    return Markup("\n".join(out))


def _heading(text: str, level: int) -> str:
    return f"<h{level}>{_inline(text)}</h{level}>"


# -- one format for each catalog fact -------------------------------------------------------------
# Cards copy their facts from model pages, which write them in several ways ("7B", "7 billion";
# "Text Embedding", "Text embedding"; "mit", "MIT"). Pages show each kind of fact one way.

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(k|thousand|m|million|b|billion|t|trillion)?\s*", re.IGNORECASE)
_SIZE_SUFFIX = {"k": "K", "thousand": "K", "m": "M", "million": "M", "b": "B", "billion": "B",
                "t": "T", "trillion": "T"}
#: SPDX identifiers for the licenses model cards name (Hugging Face writes them in lower case).
_SPDX = {"mit": "MIT", "apache-2.0": "Apache-2.0", "cc-by-4.0": "CC-BY-4.0", "cc-by-nc-4.0": "CC-BY-NC-4.0",
         "cc-by-sa-4.0": "CC-BY-SA-4.0", "cc-by-nc-sa-4.0": "CC-BY-NC-SA-4.0", "bsd-3-clause": "BSD-3-Clause",
         "bsd-2-clause": "BSD-2-Clause", "gpl-3.0": "GPL-3.0", "lgpl-3.0": "LGPL-3.0", "mpl-2.0": "MPL-2.0",
         "llama2": "Llama 2", "llama3": "Llama 3", "gemma": "Gemma", "openrail": "OpenRAIL",
         "cc0-1.0": "CC0-1.0", "unlicense": "Unlicense"}


def parameters(value: str | None) -> str:
    """A parameter count as ``22.7M`` / ``7B``: ``7 billion`` -> ``7B``; anything else as given."""
    if not value:
        return "—"
    match = _SIZE.fullmatch(value)
    if not match or not match.group(2):
        return value.strip()
    return f"{match.group(1)}{_SIZE_SUFFIX[match.group(2).lower()]}"


def license_name(value: str | None) -> str:
    """A card's license id as its SPDX identifier: ``mit`` -> ``MIT``, ``cc-by-nc-4.0`` -> ``CC-BY-NC-4.0``."""
    if not value:
        return "—"
    return _SPDX.get(value.strip().lower(), value.strip())


def task_name(value: str | None) -> str:
    """A task in sentence case: ``Text Embedding`` -> ``Text embedding``; acronyms (``MTEB``) are kept."""
    if not value:
        return "—"
    words = value.split()
    rest = [w if (len(w) > 1 and w.isupper()) else w.lower() for w in words[1:]]
    return " ".join([words[0][:1].upper() + words[0][1:], *rest])
