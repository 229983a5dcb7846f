"""Small pictures for the status page, as strings: an SVG line chart, bars, a heat map.

Pure functions: data in, markup out, every text escaped. No JavaScript and nothing fetched, so
the page renders the same behind any firewall.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

ACCURACY_COLOR = "#2563eb"
F1_COLOR = "#d97706"
_DASH = ' stroke-dasharray="6 4"'
_FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif"


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    tip: str = ""  # shown on hover (an SVG <title>)
    marked: bool = False  # drawn with a ring (e.g. the active version)


@dataclass(frozen=True)
class Series:
    name: str
    color: str
    points: Sequence[Point] = field(default_factory=tuple)
    dashed: bool = False  # tells overlapping lines apart


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_title: str,
    width: int = 640,
    height: int = 260,
) -> str:
    """Lines of fractions (0..1) against ``x``, with axes, grid, legend and hover tips.

    The y axis starts below the lowest value (0 when values go under 0.5), so a rise from
    0.82 to 0.91 is visible; points are joined in ascending ``x``.
    """
    points = [p for s in series for p in s.points]
    if not points:
        return ""
    left, right, top, bottom = 48, 16, 34, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    x_lo, x_hi = min(p.x for p in points), max(p.x for p in points)
    if x_lo == x_hi:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    pad = (x_hi - x_lo) * 0.04  # room for the end points' rings
    x_lo, x_hi = x_lo - pad, x_hi + pad
    y_lo = _y_floor(min(p.y for p in points))

    def sx(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * plot_w

    def sy(y: float) -> float:
        clamped = min(max(y, y_lo), 1.0)
        return top + (1.0 - clamped) / (1.0 - y_lo) * plot_h

    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg" '
        f'style="{_FONT};max-width:100%;height:auto">',
        f"<title>{escape(title)}</title>",
    ]
    for tick in _ticks(y_lo, 1.0, 6):
        y = sy(tick)
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="#e5e7eb" stroke-width="1"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#6b7280">{tick:.0%}</text>'
        )
    for tick in _ticks(x_lo + pad, x_hi - pad, 6, integer=True):
        x = sx(tick)
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top + plot_h}" y2="{top + plot_h + 4}" '
            'stroke="#9ca3af"/>'
            f'<text x="{x:.1f}" y="{top + plot_h + 17}" text-anchor="middle" font-size="11" '
            f'fill="#6b7280">{tick:g}</text>'
        )
    parts.append(
        f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" '
        'stroke="#9ca3af"/>'
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle" '
        f'font-size="12" fill="#374151">{escape(x_title)}</text>'
    )
    legend_x = left
    for s in series:
        parts.append(
            f'<line x1="{legend_x}" x2="{legend_x + 22}" y1="12" y2="12" stroke-width="2.5" '
            f'stroke="{escape(s.color)}"{_DASH if s.dashed else ""}/>'
            f'<text x="{legend_x + 28}" y="16" font-size="12" fill="#374151">'
            f"{escape(s.name)}</text>"
        )
        legend_x += 48 + 7 * len(s.name)
    for s in series:
        ordered = sorted(s.points, key=lambda p: p.x)
        color = escape(s.color)
        if len(ordered) > 1:
            path = " ".join(f"{sx(p.x):.1f},{sy(p.y):.1f}" for p in ordered)
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2.5" '
                f'stroke-linejoin="round" stroke-linecap="round"{_DASH if s.dashed else ""}/>'
            )
        for p in ordered:
            cx, cy = f"{sx(p.x):.1f}", f"{sy(p.y):.1f}"
            ring = (
                f'<circle cx="{cx}" cy="{cy}" r="8" fill="none" stroke="{color}" '
                'stroke-width="1.5" opacity="0.6"/>'
                if p.marked
                else ""
            )
            tip = f"<title>{escape(p.tip)}</title>" if p.tip else ""
            parts.append(
                f'<g>{ring}<circle cx="{cx}" cy="{cy}" r="4" fill="#fff" stroke="{color}" '
                f'stroke-width="2.5"/>{tip}</g>'
            )
    parts.append("</svg>")
    return "".join(parts)


def bar(fraction: float, color: str = ACCURACY_COLOR, width_px: int = 120) -> str:
    """A horizontal bar filled to ``fraction`` (clamped to 0..1)."""
    filled = min(max(fraction, 0.0), 1.0) * 100
    return (
        f'<span class="bar" style="display:inline-block;width:{width_px}px;height:10px;'
        f'background:#e5e7eb;border-radius:5px;overflow:hidden;vertical-align:middle">'
        f'<span style="display:block;width:{filled:.1f}%;height:100%;'
        f'background:{escape(color)}"></span></span>'
    )


def heatmap(labels: Sequence[str], matrix: Sequence[Sequence[int]]) -> str:
    """A confusion matrix as an HTML table: rows are true labels, columns predicted ones.

    A cell's colour is its share of the row (what fraction of that class went where): blue on
    the diagonal (right), red elsewhere (confusions).
    """
    head = "".join(f'<th scope="col">{escape(label)}</th>' for label in labels)
    rows = []
    for i, (label, row) in enumerate(zip(labels, matrix, strict=False)):
        total = sum(row)
        cells = []
        for j, count in enumerate(row):
            share = count / total if total else 0.0
            rgb = "37,99,235" if i == j else "220,38,38"
            ink = "#fff" if share > 0.55 else "#111827"
            tip = f"true {label}, predicted {labels[j] if j < len(labels) else j}: {count}"
            cells.append(
                f'<td style="background:rgba({rgb},{0.08 + 0.92 * share:.2f});color:{ink}" '
                f'title="{escape(tip)} ({share:.0%} of {total})">{count}</td>'
                if count
                else f'<td title="{escape(tip)}" class="zero">0</td>'
            )
        rows.append(f'<tr><th scope="row">{escape(label)}</th>{"".join(cells)}</tr>')
    return (
        '<table class="confusion"><thead><tr><th class="corner">true ╲ predicted</th>'
        f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _y_floor(lowest: float) -> float:
    """The y axis' lower end: 0, or a tenth below the lowest value when all are high."""
    if lowest < 0.5:
        return 0.0
    return max(0.0, math.floor((lowest - 0.05) * 10) / 10)


def _ticks(lo: float, hi: float, count: int, *, integer: bool = False) -> list[float]:
    """Round numbers from ``lo`` to ``hi`` about ``count`` apart (1, 2 or 5 times 10^n)."""
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1.0, round(step))
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    value = first
    while value <= hi + 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks
