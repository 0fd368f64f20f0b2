"""Inline SVG charts, rendered on the server: no chart library, no script, readable by screen readers.

Each chart is an ``<svg role="img">`` with a ``<title>`` and a ``<desc>`` that
states the totals; every bar carries its own ``<title>`` (a hover tooltip).
The page shows the same numbers in a table beside it.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

COLORS = ("#1f5fd1", "#e07a10", "#0f7a3d", "#9b2fae", "#b3261e", "#5b6470")


def nice_max(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 x 10^k at or above ``value`` (the axis top)."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1) if value >= 1 else 1.0
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


def _num(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}".removesuffix(".0") + "M"
    if value >= 1_000:
        return f"{value / 1_000:.1f}".removesuffix(".0") + "K"
    return f"{value:g}"


def columns(points: Sequence[tuple[str, float]], *, chart_id: str, title: str, desc: str, unit: str,
            label_every: int = 5, width: int = 720, height: int = 220, variant: str = "wide") -> Markup:
    """Vertical bars, one per point (e.g. tokens per day); x labels on every ``label_every``-th bar, and on the
    last when it is not too close to the one before.

    ``variant`` is a CSS class: pages draw a ``wide`` chart for a desktop and a ``narrow`` one (``width=360``,
    labels further apart) for a phone, and show one of them.
    """
    left, right, top, bottom = 48, 8, 10, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    top_value = nice_max(max((v for _, v in points), default=0))
    slot = plot_w / max(len(points), 1)
    bar_w = max(slot * 0.7, 1.0)
    parts = [_open(chart_id, width, height, title, desc, variant)]
    for fraction in (0, 0.5, 1):
        y = top + plot_h * (1 - fraction)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#d9dee4"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_num(top_value * fraction)}</text>')
    for i, (label, value) in enumerate(points):
        h = plot_h * value / top_value
        x = left + i * slot + (slot - bar_w) / 2
        parts.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                     f'fill="{COLORS[0]}"><title>{escape(label)}: {value:,.0f} {escape(unit)}</title></rect>')
        last = i == len(points) - 1 and i % label_every >= label_every / 2
        if i % label_every == 0 or last:
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{height - 8}" text-anchor="middle">{escape(label)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def bars(points: Sequence[tuple[str, float]], *, chart_id: str, title: str, desc: str, unit: str,
         width: int = 720, row: int = 30, label_w: int = 220, value_w: int = 80, variant: str = "wide") -> Markup:
    """Horizontal bars, one row per point (e.g. tokens per model), each in its own colour.

    Labels longer than ``label_w`` holds (about 6.5 px a character) end in an ellipsis; the bar's
    tooltip has the whole name.
    """
    pad = 6
    height = max(len(points), 1) * row + 2 * pad
    top_value = max((v for _, v in points), default=0) or 1
    plot_w = width - label_w - value_w
    fits = max(int((label_w - 12) / 6.5), 4)
    parts = [_open(chart_id, width, height, title, desc, variant)]
    for i, (label, value) in enumerate(points):
        y = pad + i * row
        w = max(plot_w * value / top_value, 2.0)
        short = label if len(label) <= fits else label[:fits - 1] + "…"
        parts.append(f'<text x="{label_w - 8}" y="{y + row / 2 + 4:.1f}" text-anchor="end">{escape(short)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 5}" width="{w:.1f}" height="{row - 10}" rx="3" '
                     f'fill="{COLORS[i % len(COLORS)]}">'
                     f'<title>{escape(label)}: {value:,.0f} {escape(unit)}</title></rect>')
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + row / 2 + 4:.1f}">{_num(value)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _open(chart_id: str, width: int, height: int, title: str, desc: str, variant: str) -> str:
    return (f'<svg class="chart {variant}" id="{chart_id}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-labelledby="{chart_id}-t {chart_id}-d" xmlns="http://www.w3.org/2000/svg">'
            f'<title id="{chart_id}-t">{escape(title)}</title><desc id="{chart_id}-d">{escape(desc)}</desc>')
