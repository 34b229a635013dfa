"""Server-side SVG for the dashboard's charts: pure functions from chart data to markup.

No JavaScript and nothing loaded from elsewhere: the page must work offline and in a headless
browser. Every chart has its min/max values on both axes, axis titles and a legend; every text
that comes from data (series names, labels) is escaped, since metric labels are free text.

Why not matplotlib (a dependency already): measured against a matplotlib renderer of the same
charts (Figure objects without pyplot, matplotlib's SVG canvas, text kept as ``<text>``, fixed
margins instead of a layout engine, one ``bar`` call per chart, tooltips added as ``<title>``),
on the page of six panels and 14 charts; CPU time per page, median of 7, matplotlib 3.11, on
the shared 2-core dev machine:

- a full hour (60 buckets, 6 nodes, 60 snapshot versions): 3 ms here, 465 ms with matplotlib;
  the page is 77 KiB (11 KiB gzipped) here, 177 KiB (20 KiB) with matplotlib;
- the dev stack after a 30 s demo: 0.7 ms vs 388 ms; 36 KiB (4) vs 107 KiB (7).

About 25 ms per chart is matplotlib's floor (building and drawing an Axes), so every 10 s
refresh of every open tab would cost a core a third of a second or more, for a page 2.3-3x
larger; and matplotlib's rcParams are global, so renders would serialize on a lock. This
module is pure functions over four chart shapes, and its tests check the geometry directly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from html import escape

from paperec.dashboard.model import BarChart, LineChart, Series

WIDTH = 620
HEIGHT = 270
MARGIN_LEFT = 70
MARGIN_RIGHT = 16
MARGIN_TOP = 12
AXIS_BAND = 40  # below the plot: x tick labels and the x axis title
LEGEND_ROW = 18
LEGEND_ITEM_WIDTH = 200
NO_DATA = "no data yet"

# Tableau 10: distinguishable, and readable on white.
PALETTE = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
)  # fmt: skip


def series_color(s: Series, position: int) -> str:
    return PALETTE[(position if s.color is None else s.color) % len(PALETTE)]


def fmt_number(v: float) -> str:
    """Short, stable number text for axis labels (4 significant digits)."""
    if v == 0 or not math.isfinite(v):
        return "0" if v == 0 else str(v)
    text = f"{v:.4g}"
    return text.replace("e+0", "e").replace("e-0", "e-")


def fmt_time(epoch_s: float, span_s: float) -> str:
    """Local wall-clock time; with the date once the chart spans more than a day."""
    pattern = "%m-%d %H:%M" if span_s > 86_400 else "%H:%M:%S"
    return time.strftime(pattern, time.localtime(epoch_s))


def value_range(values: Sequence[float], from_zero: bool = False) -> tuple[float, float]:
    """[low, high] covering ``values`` (never empty: a single value gets some room around it)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    if from_zero:
        low, high = min(low, 0.0), max(high, 0.0)
    if high == low:
        pad = abs(high) * 0.1 or 1.0
        return (low if from_zero and low == 0 else low - pad), high + pad
    return low, high


def scale(domain: tuple[float, float], pixels: tuple[float, float]) -> Callable[[float], float]:
    """Linear map from ``domain`` onto ``pixels`` (which may run backwards, as y does in SVG)."""
    (d0, d1), (p0, p1) = domain, pixels
    ratio = (p1 - p0) / (d1 - d0)
    return lambda v: p0 + (v - d0) * ratio


def split_at_gaps(
    points: Sequence[tuple[float, float]], max_gap: float | None
) -> list[list[tuple[float, float]]]:
    """Runs of consecutive points no further apart than ``max_gap`` (x units)."""
    runs: list[list[tuple[float, float]]] = []
    for p in points:
        if not math.isfinite(p[1]):
            runs.append([])  # a NaN (e.g. CTR of a bucket without impressions) breaks the line
            continue
        if runs and runs[-1] and (max_gap is None or p[0] - runs[-1][-1][0] <= max_gap):
            runs[-1].append(p)
        else:
            runs.append([p])
    return [r for r in runs if r]


def _band_runs(
    band: Sequence[tuple[float, float, float]], max_gap: float | None
) -> list[list[tuple[float, float, float]]]:
    """A shaded band split like its line (at gaps and non-finite bounds); runs of 2+ points."""
    runs: list[list[tuple[float, float, float]]] = [[]]
    for p in band:
        if not (math.isfinite(p[1]) and math.isfinite(p[2])):
            runs.append([])
            continue
        if runs[-1] and max_gap is not None and p[0] - runs[-1][-1][0] > max_gap:
            runs.append([])
        runs[-1].append(p)
    return [r for r in runs if len(r) >= 2]


def _text(x: float, y: float, body: str, anchor: str = "start", cls: str = "", extra: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    attrs = f'x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{klass}{extra}'
    return f"<text {attrs}>{escape(body, quote=True)}</text>"


def _legend_height(n: int, plot_width: float) -> int:
    per_row = max(1, int(plot_width // LEGEND_ITEM_WIDTH))
    return LEGEND_ROW * math.ceil(n / per_row) if n else 0


def _legend(series: Sequence[Series], x0: float, y0: float, plot_width: float) -> list[str]:
    per_row = max(1, int(plot_width // LEGEND_ITEM_WIDTH))
    out = ['<g class="legend">']
    for i, s in enumerate(series):
        x = x0 + (i % per_row) * LEGEND_ITEM_WIDTH
        y = y0 + (i // per_row) * LEGEND_ROW + 12
        color = series_color(s, i)
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        out.append(
            f'<line x1="{x:.1f}" y1="{y - 4:.1f}" x2="{x + 22:.1f}" y2="{y - 4:.1f}" '
            f'stroke="{color}" stroke-width="2.5"{dash}/>'
        )
        name = s.name if len(s.name) <= 26 else s.name[:25] + "…"
        out.append(_text(x + 27, y, name, cls="legend-label"))
    out.append("</g>")
    return out


def _frame(width: int, height: int, body: list[str], label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label, quote=True)}">'
        + "".join(body)
        + "</svg>"
    )


def empty_svg(title: str, message: str = NO_DATA, width: int = WIDTH, height: int = HEIGHT) -> str:
    body = [
        f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" class="empty-box"/>',
        _text(width / 2, height / 2, message, anchor="middle", cls="no-data"),
    ]
    return _frame(width, height, body, title)


def _axes(
    x_ticks: Sequence[tuple[float, str]],
    y_ticks: Sequence[tuple[float, str]],
    left: float,
    right: float,
    top: float,
    bottom: float,
    x_label: str,
    y_label: str,
) -> list[str]:
    """Grid lines at the y ticks, the plot frame, tick labels and both axis titles."""
    out = ['<g class="axes">']
    for y, text in y_ticks:
        out.append(f'<line x1="{left:.1f}" y1="{y:.1f}" x2="{right:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(_text(left - 6, y + 4, text, anchor="end", cls="tick"))
    for i, (x, text) in enumerate(x_ticks):
        anchor = "start" if i == 0 and len(x_ticks) > 1 else "end" if i == len(x_ticks) - 1 else "middle"
        if len(x_ticks) == 1:
            anchor = "middle"
        out.append(f'<line x1="{x:.1f}" y1="{bottom:.1f}" x2="{x:.1f}" y2="{bottom + 4:.1f}" class="axis"/>')
        out.append(_text(x, bottom + 16, text, anchor=anchor, cls="tick"))
    out.append(f'<path d="M{left:.1f},{top:.1f} V{bottom:.1f} H{right:.1f}" class="axis" fill="none"/>')
    out.append(_text((left + right) / 2, bottom + 33, x_label, anchor="middle", cls="axis-title"))
    cy = (top + bottom) / 2
    out.append(
        _text(
            14, cy, y_label, anchor="middle", cls="axis-title", extra=f' transform="rotate(-90 14 {cy:.1f})"'
        )
    )
    out.append("</g>")
    return out


def line_chart_svg(chart: LineChart, width: int = WIDTH, height: int = HEIGHT) -> str:
    """A line chart; "no data yet" when no series has a point. The legend goes below the plot
    and adds to ``height``, so many series never squeeze the plot."""
    if chart.is_empty():
        return empty_svg(chart.title, width=width, height=height)
    series = chart.series
    left, right = MARGIN_LEFT, width - MARGIN_RIGHT
    legend_h = _legend_height(len(series), right - left)
    top, bottom = MARGIN_TOP, height - AXIS_BAND
    xs = [p[0] for s in series for p in s.points]
    ys = [p[1] for s in series for p in s.points]
    for s in series:
        for _, lo, hi in s.band or ():
            ys += [lo, hi]
    x_lo, x_hi = chart.x_range if chart.x_range and chart.x_range[1] > chart.x_range[0] else value_range(xs)
    y_lo, y_hi = value_range(ys, from_zero=chart.y_from_zero)
    sx, sy = scale((x_lo, x_hi), (left, right)), scale((y_lo, y_hi), (bottom, top))

    span = x_hi - x_lo

    def x_text(v: float) -> str:
        return fmt_time(v, span) if chart.x_is_time else fmt_number(v)

    x_ticks = [(sx(v), x_text(v)) for v in (x_lo, (x_lo + x_hi) / 2, x_hi)]
    y_ticks = [(sy(v), fmt_number(v)) for v in (y_lo, (y_lo + y_hi) / 2, y_hi)]
    body = _axes(x_ticks, y_ticks, left, right, top, bottom, chart.x_label, chart.y_label)
    for i, s in enumerate(series):
        color = series_color(s, i)
        body.append(
            f'<g class="series" data-name="{escape(s.name, quote=True)}" data-points="{len(s.points)}">'
        )
        body.append(f"<title>{escape(s.name)}</title>")
        for band in _band_runs(s.band or [], chart.max_gap):
            upper = " ".join(f"{sx(x):.1f},{sy(hi):.1f}" for x, _, hi in band)
            lower = " ".join(f"{sx(x):.1f},{sy(lo):.1f}" for x, lo, _ in reversed(band))
            body.append(
                f'<polygon points="{upper} {lower}" fill="{color}" fill-opacity="0.15" stroke="none"/>'
            )
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        for run in split_at_gaps(s.points, chart.max_gap):
            if len(run) == 1:  # a lone point would be invisible as a polyline
                x, y = run[0]
                body.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"/>')
                continue
            pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in run)
            body.append(
                f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"'
                f' stroke-linejoin="round"{dash}/>'
            )
        body.append("</g>")
    body += _legend(series, left, bottom + AXIS_BAND, right - left)
    return _frame(width, height + legend_h, body, chart.title)


def bar_chart_svg(chart: BarChart, width: int = WIDTH, height: int = HEIGHT) -> str:
    """Vertical bars from zero, one per category; "no data yet" when there are none."""
    if chart.is_empty():
        return empty_svg(chart.title, width=width, height=height)
    left, right = MARGIN_LEFT, width - MARGIN_RIGHT
    top, bottom = MARGIN_TOP, height - AXIS_BAND
    values = [b.value for b in chart.bars]
    y_lo, y_hi = value_range(values, from_zero=True)
    sy = scale((y_lo, y_hi), (bottom, top))
    slot = (right - left) / len(chart.bars)
    bar_w = max(1.0, slot * 0.8)
    # Label every k-th bar so labels never overlap (about 7 px per character at 11 px).
    longest = max(len(b.label) for b in chart.bars)
    every = max(1, math.ceil((longest * 7 + 6) / slot))
    x_ticks = [
        (left + (i + 0.5) * slot, b.label)
        for i, b in enumerate(chart.bars)
        if i % every == 0 or i == len(chart.bars) - 1
    ]
    if len(x_ticks) > 1 and x_ticks[-1][0] - x_ticks[-2][0] < (longest * 7 + 6):
        x_ticks.pop(-2)  # keep the last category's label, which is the max
    y_ticks = [(sy(v), fmt_number(v)) for v in (y_lo, (y_lo + y_hi) / 2, y_hi)]
    body = _axes([], y_ticks, left, right, top, bottom, chart.x_label, chart.y_label)
    for x, text in x_ticks:
        body.append(_text(x, bottom + 16, text, anchor="middle", cls="tick"))
    zero = sy(0.0)
    body.append(f'<g class="bars" data-bars="{len(chart.bars)}">')
    for i, b in enumerate(chart.bars):
        x = left + i * slot + (slot - bar_w) / 2
        y = sy(b.value) if math.isfinite(b.value) else zero
        tip = f"{b.label}: {fmt_number(b.value)}" + (f" ({b.detail})" if b.detail else "")
        body.append(
            f'<rect x="{x:.1f}" y="{min(y, zero):.1f}" width="{bar_w:.1f}" height="{abs(zero - y):.1f}" '
            f'fill="{PALETTE[0]}"><title>{escape(tip)}</title></rect>'
        )
    body.append("</g>")
    return _frame(width, height, body, chart.title)


def horizontal_bar_chart_svg(chart: BarChart, width: int = WIDTH, row: int = 22) -> str:
    """One row per bar with its name on the left and its value at its end: for category names
    too long to fit under vertical bars. The height follows the number of bars."""
    if chart.is_empty():
        return empty_svg(chart.title, width=width)
    label_w = 270
    left, right = label_w, width - MARGIN_RIGHT - 50  # room for the value text after the bar
    top = MARGIN_TOP
    bottom = top + row * len(chart.bars)
    height = bottom + AXIS_BAND
    x_lo, x_hi = value_range([b.value for b in chart.bars], from_zero=True)
    sx = scale((x_lo, x_hi), (left, right))
    x_ticks = [(sx(v), fmt_number(v)) for v in (x_lo, (x_lo + x_hi) / 2, x_hi)]
    body = ['<g class="axes">']
    for x, text in x_ticks:
        body.append(f'<line x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{bottom:.1f}" class="grid"/>')
        body.append(_text(x, bottom + 16, text, anchor="middle", cls="tick"))
    body.append(f'<path d="M{left:.1f},{top:.1f} V{bottom:.1f} H{right:.1f}" class="axis" fill="none"/>')
    body.append(_text((left + right) / 2, bottom + 33, chart.y_label, anchor="middle", cls="axis-title"))
    body.append(_text(8, bottom + 33, chart.x_label, cls="axis-title"))
    body.append("</g>")
    zero = sx(0.0)
    body.append(f'<g class="bars" data-bars="{len(chart.bars)}">')
    for i, b in enumerate(chart.bars):
        y = top + i * row
        x = sx(b.value) if math.isfinite(b.value) else zero
        name = b.label if len(b.label) <= 40 else b.label[:39] + "…"
        tip = f"{b.label}: {fmt_number(b.value)}" + (f" ({b.detail})" if b.detail else "")
        body.append(_text(left - 6, y + row / 2 + 4, name, anchor="end", cls="tick"))
        body.append(
            f'<rect x="{min(x, zero):.1f}" y="{y + 3:.1f}" width="{abs(x - zero):.1f}" height="{row - 6}" '
            f'fill="{PALETTE[0]}"><title>{escape(tip)}</title></rect>'
        )
        body.append(_text(max(x, zero) + 4, y + row / 2 + 4, fmt_number(b.value), cls="tick"))
    body.append("</g>")
    return _frame(width, height, body, chart.title)


def chart_svg(chart: LineChart | BarChart, width: int = WIDTH, height: int = HEIGHT) -> str:
    if isinstance(chart, BarChart):
        return (
            horizontal_bar_chart_svg(chart, width)
            if chart.horizontal
            else bar_chart_svg(chart, width, height)
        )
    return line_chart_svg(chart, width, height)
