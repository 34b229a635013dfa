"""The dashboard's SVG charts: pure functions, checked on their markup (well-formed XML, one
coordinate per point, points inside the plot, min/max labels, legend, escaping)."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import pytest

from paperec.dashboard.model import Bar, BarChart, LineChart, Series
from paperec.dashboard.svg import (
    AXIS_BAND,
    HEIGHT,
    MARGIN_LEFT,
    MARGIN_RIGHT,
    MARGIN_TOP,
    NO_DATA,
    WIDTH,
    bar_chart_svg,
    chart_svg,
    fmt_number,
    horizontal_bar_chart_svg,
    line_chart_svg,
    scale,
    split_at_gaps,
    value_range,
)

NS = "{http://www.w3.org/2000/svg}"


def _xml(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # raises on malformed markup (e.g. an unescaped label)


def _polylines(svg: str) -> list[list[tuple[float, float]]]:
    out = []
    for pl in _xml(svg).iter(f"{NS}polyline"):
        pts = [(float(p.split(",")[0]), float(p.split(",")[1])) for p in pl.attrib["points"].split()]
        out.append(pts)
    return out


def _texts(svg: str) -> list[str]:
    return [t.text or "" for t in _xml(svg).iter(f"{NS}text")]


def _line(*series: Series, **kw: object) -> LineChart:
    return LineChart("t", "y units", list(series), x_is_time=False, x_label="x units", **kw)  # type: ignore[arg-type]


def test_one_polyline_coordinate_per_point() -> None:
    a = Series("a", [(float(i), float(i * i)) for i in range(5)])
    b = Series("b", [(1.0, 3.0), (2.0, 1.0), (4.0, 2.0)])
    svg = line_chart_svg(_line(a, b))
    assert [len(p) for p in _polylines(svg)] == [5, 3]
    groups = [g for g in _xml(svg).iter(f"{NS}g") if g.attrib.get("class") == "series"]
    assert [(g.attrib["data-name"], g.attrib["data-points"]) for g in groups] == [("a", "5"), ("b", "3")]


def test_points_are_scaled_into_the_plot_box() -> None:
    s = Series("s", [(10.0, -2.0), (20.0, 0.0), (30.0, 6.0)])
    (pts,) = _polylines(line_chart_svg(_line(s)))
    left, right = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
    top, bottom = MARGIN_TOP, HEIGHT - AXIS_BAND
    assert pts[0] == pytest.approx((left, bottom), abs=0.1)  # min x, min y: bottom left
    assert pts[-1] == pytest.approx((right, top), abs=0.1)  # max x, max y: top right
    mid_y = bottom + (0 - (-2)) / 8 * (top - bottom)
    assert pts[1] == pytest.approx(((left + right) / 2, mid_y), abs=0.1)


def test_axes_carry_min_and_max_values_and_titles() -> None:
    s = Series("s", [(1.0, 0.25), (3.0, 0.75)])
    texts = _texts(line_chart_svg(_line(s)))
    for expected in ("0.25", "0.75", "1", "3", "x units", "y units", "s"):
        assert expected in texts


def test_y_from_zero_includes_zero() -> None:
    s = Series("s", [(1.0, 5.0), (2.0, 7.0)])
    assert "0" in _texts(line_chart_svg(_line(s, y_from_zero=True)))
    assert "0" not in _texts(line_chart_svg(_line(s)))


def test_time_axis_labels_are_clock_times() -> None:
    chart = LineChart("t", "y", [Series("s", [(1_700_000_000.0, 1.0), (1_700_000_600.0, 2.0)])])
    labels = _texts(line_chart_svg(chart))
    assert sum(bool(re.fullmatch(r"\d\d:\d\d:\d\d", t)) for t in labels) == 3  # min, mid, max


def test_shared_x_range_is_used() -> None:
    chart = _line(Series("s", [(5.0, 1.0), (6.0, 2.0)]), x_range=(0.0, 10.0))
    (pts,) = _polylines(line_chart_svg(chart))
    plot_w = WIDTH - MARGIN_RIGHT - MARGIN_LEFT
    assert pts[0][0] == pytest.approx(MARGIN_LEFT + plot_w / 2, abs=0.1)


def test_gaps_split_lines_and_lone_points_become_circles() -> None:
    s = Series("s", [(0.0, 1.0), (1.0, 2.0), (10.0, 3.0), (20.0, 1.0), (21.0, 1.0)])
    svg = line_chart_svg(_line(s, max_gap=2.0))
    assert [len(p) for p in _polylines(svg)] == [2, 2]
    assert len(list(_xml(svg).iter(f"{NS}circle"))) == 1
    assert split_at_gaps([(0.0, 1.0), (1.0, math.nan), (2.0, 1.0)], None) == [[(0.0, 1.0)], [(2.0, 1.0)]]


def test_labels_are_escaped() -> None:
    nasty = '<script>alert("x")</script> & co'
    svg = line_chart_svg(LineChart(nasty, nasty, [Series(nasty, [(0.0, 1.0), (1.0, 2.0)])], x_label=nasty))
    assert "<script>" not in svg
    assert "&lt;script&gt;" in svg
    root = _xml(svg)
    assert any((t.text or "").startswith("<script>") for t in root.iter(f"{NS}text"))  # round-trips
    bars = bar_chart_svg(BarChart(nasty, nasty, nasty, [Bar(nasty, 1.0, nasty)]))
    assert "<script>" not in bars and _xml(bars) is not None
    hbars = horizontal_bar_chart_svg(BarChart(nasty, nasty, nasty, [Bar(nasty, 1.0, nasty)]))
    assert "<script>" not in hbars and _xml(hbars) is not None


def test_band_is_drawn_behind_the_line() -> None:
    s = Series("m", [(0.0, 0.5), (1.0, 0.6)], band=[(0.0, 0.4, 0.6), (1.0, 0.5, 0.7)])
    svg = line_chart_svg(_line(s))
    (poly,) = _xml(svg).iter(f"{NS}polygon")
    assert len(poly.attrib["points"].split()) == 4
    assert "0.7" in _texts(svg)  # the band widens the y range


def test_legend_grows_the_svg_instead_of_squeezing_the_plot() -> None:
    few = line_chart_svg(_line(Series("a", [(0.0, 1.0), (1.0, 2.0)])))
    many = line_chart_svg(_line(*[Series(f"s{i}", [(0.0, i), (1.0, i + 1.0)]) for i in range(12)]))
    assert int(_xml(many).attrib["height"]) > int(_xml(few).attrib["height"])
    assert [len(p) for p in _polylines(many)] == [2] * 12


@pytest.mark.parametrize(
    "chart",
    [
        LineChart("empty", "y", []),
        LineChart("no points", "y", [Series("s", [])]),
        BarChart("no bars", "x", "y", []),
        BarChart("no bars", "x", "y", [], horizontal=True),
    ],
)
def test_empty_charts_say_no_data_yet(chart: LineChart | BarChart) -> None:
    svg = chart_svg(chart)
    assert NO_DATA in _texts(svg)
    assert not list(_xml(svg).iter(f"{NS}polyline"))


def test_bar_heights_are_proportional_from_zero() -> None:
    chart = BarChart("b", "cat", "val", [Bar("a", 1.0), Bar("b", 2.0), Bar("c", 4.0)])
    svg = bar_chart_svg(chart)
    rects = [r for r in _xml(svg).iter(f"{NS}rect")]
    assert len(rects) == 3
    heights = [float(r.attrib["height"]) for r in rects]
    assert heights[1] == pytest.approx(2 * heights[0], rel=1e-2)
    assert heights[2] == pytest.approx(HEIGHT - AXIS_BAND - MARGIN_TOP, abs=0.2)
    assert {"0", "4"} <= set(_texts(svg))


def test_bar_labels_thin_out_but_keep_the_last() -> None:
    chart = BarChart("h", "bin", "n", [Bar(f"{i / 100:.2f}", float(i)) for i in range(100)])
    labels = [t for t in _texts(bar_chart_svg(chart)) if re.fullmatch(r"0\.\d\d", t)]
    assert 3 < len(labels) < 40
    assert labels[0] == "0.00" and labels[-1] == "0.99"


def test_horizontal_bars_have_one_row_per_bar_with_names_and_values() -> None:
    chart = BarChart(
        "d", "origin", "count", [Bar("streams decode", 3.0), Bar("learner dead", 0.0)], horizontal=True
    )
    svg = horizontal_bar_chart_svg(chart)
    assert len(list(_xml(svg).iter(f"{NS}rect"))) == 2
    texts = _texts(svg)
    assert {"streams decode", "learner dead", "3", "0"} <= set(texts)


def test_number_format_and_ranges() -> None:
    assert fmt_number(0.0) == "0"
    assert fmt_number(0.0123456) == "0.01235"
    assert fmt_number(123456.0) == "1.235e5"
    assert value_range([2.0, 2.0]) == (1.8, 2.2)
    assert value_range([0.0], from_zero=True) == (0.0, 1.0)
    assert value_range([3.0, 5.0], from_zero=True) == (0.0, 5.0)
    assert value_range([]) == (0.0, 1.0)
    assert scale((0.0, 10.0), (100.0, 0.0))(2.5) == 75.0
