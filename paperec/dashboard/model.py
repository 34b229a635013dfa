"""What the built-in dashboard shows, as plain data: panels of line and bar charts and tables.

The queries (paperec.dashboard.queries) build these, the SVG renderer (paperec.dashboard.svg)
and the page (paperec.dashboard.page) draw them (a Table as plain HTML), and
``/api/panels.json`` serves them as JSON (``dataclasses.asdict``), so the three never share more
than these classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Series:
    """One line: ``points`` are (x, y) sorted by x; x is epoch seconds on time charts.

    ``band`` is an optional shaded range (x, low, high) drawn behind the line (mean +- std).
    """

    name: str
    points: list[tuple[float, float]]
    dashed: bool = False
    band: list[tuple[float, float, float]] | None = None
    color: int | None = None  # palette index; default: the series' position in its chart


@dataclass
class LineChart:
    title: str
    y_label: str
    series: list[Series]
    x_label: str = "time"
    x_is_time: bool = True
    # Points further apart than this (x units) are not joined: a gap between two demo runs
    # shows as a gap, not as a straight line across it.
    max_gap: float | None = None
    y_from_zero: bool = False
    # Shared by all time charts of a page so that they line up; default: the data's extent.
    x_range: tuple[float, float] | None = None
    kind: str = "line"

    def is_empty(self) -> bool:
        return not any(s.points for s in self.series)


@dataclass
class Bar:
    label: str
    value: float
    detail: str = ""  # tooltip text (e.g. the number of lists behind a ratio)


@dataclass
class BarChart:
    title: str
    x_label: str
    y_label: str
    bars: list[Bar]
    horizontal: bool = False  # for long category names: one row per bar, name on the left
    kind: str = "bar"

    def is_empty(self) -> bool:
        return not self.bars


@dataclass
class Table:
    """Rows of text cells under column headers (rendered as an HTML table, not SVG): for what is
    read rather than compared by eye, e.g. rollout decisions with their reasons."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    kind: str = "table"

    def is_empty(self) -> bool:
        return not self.rows


Chart = LineChart | BarChart | Table


@dataclass
class Panel:
    key: str  # "a".."g": stable ids for the page's sections and the tests
    title: str
    charts: list[Chart]
    note: str = ""  # one line under the title: what is aggregated how
    errors: list[str] = field(default_factory=list)  # queries of this panel that failed


@dataclass
class Dashboard:
    window_minutes: int
    step_s: int
    generated_at: float  # epoch seconds
    database: str
    panels: list[Panel]
    error: str = ""  # set when ClickHouse could not be reached at all
