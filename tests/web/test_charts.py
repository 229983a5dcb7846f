"""service.web.charts: data in, markup out."""

import re
import xml.etree.ElementTree as ET

import pytest

from service.web import charts
from service.web.charts import Point, Series

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # raises on malformed markup


def circles(root: ET.Element) -> list[tuple[float, float, str]]:
    """(cx, cy, tip) of every data point (rings of marked points left out)."""
    found = []
    for group in root.iter(f"{SVG}g"):
        dot = next(c for c in group.findall(f"{SVG}circle") if c.get("r") == "4")
        tip = group.find(f"{SVG}title")
        text = "" if tip is None else tip.text or ""
        found.append((float(dot.get("cx", 0)), float(dot.get("cy", 0)), text))
    return found


def chart(*series: Series) -> str:
    return charts.line_chart(series, title="quality", x_title="labels")


def test_no_points_no_chart() -> None:
    assert chart(Series("accuracy", "#000", [])) == ""


def test_points_are_placed_by_value() -> None:
    svg = chart(
        Series(
            "accuracy",
            "#111111",
            [Point(50, 0.9, "v3"), Point(10, 0.6, "v1"), Point(30, 0.75, "v2")],
        )
    )
    root = parse(svg)
    dots = sorted(circles(root))
    assert [tip for _, _, tip in dots] == ["v1", "v2", "v3"]  # left to right by x
    ys = [cy for _, cy, _ in dots]
    assert ys[0] > ys[1] > ys[2]  # higher value, higher on the page (smaller y)
    xs = [cx for cx, _, _ in dots]
    assert xs[1] - xs[0] == pytest.approx(xs[2] - xs[1], abs=0.2)  # linear in x
    line = root.find(f"{SVG}polyline")
    assert line is not None
    joined = [tuple(map(float, p.split(","))) for p in line.get("points", "").split()]
    assert joined == [(cx, cy) for cx, cy, _ in dots]  # the line joins them in x order


def test_two_series_legend_dashes_and_marked_point() -> None:
    svg = chart(
        Series("accuracy", "#2563eb", [Point(1, 0.7), Point(2, 0.8, marked=True)]),
        Series("macro-F1", "#d97706", [Point(1, 0.6), Point(2, 0.75, marked=True)], dashed=True),
    )
    root = parse(svg)
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "accuracy" in texts and "macro-F1" in texts and "labels" in texts
    lines = root.findall(f"{SVG}polyline")
    assert [line.get("stroke-dasharray") for line in lines] == [None, "6 4"]
    rings = [c for c in root.iter(f"{SVG}circle") if c.get("r") == "8"]
    assert len(rings) == 2


def test_y_axis_zooms_in_on_high_values_and_keeps_zero_for_low_ones() -> None:
    high = [t.text for t in parse(chart(Series("a", "#000", [Point(1, 0.86)]))).iter(f"{SVG}text")]
    assert "80%" in high and "100%" in high and "0%" not in high
    low = [t.text for t in parse(chart(Series("a", "#000", [Point(1, 0.3)]))).iter(f"{SVG}text")]
    assert "0%" in low and "100%" in low


def test_a_single_point_and_out_of_range_values_stay_inside() -> None:
    svg = chart(Series("a", "#000", [Point(5, 1.7), Point(5, -0.2)]))
    root = parse(svg)
    width, height = (float(v) for v in root.get("viewBox", "").split()[2:])
    assert len(circles(root)) == 2
    for cx, cy, _ in circles(root):
        assert 0 < cx < width and 0 < cy < height


def test_text_is_escaped() -> None:
    svg = charts.line_chart(
        [Series("<b>acc", "#000", [Point(1, 0.5, tip="</title><script>")])],
        title='"><script>',
        x_title="<x>",
    )
    assert "<script" not in svg and "<b>" not in svg and "<x>" not in svg
    parse(svg)


@pytest.mark.parametrize(
    ("lo", "hi", "count", "integer", "expected"),
    [
        (0.0, 1.0, 6, False, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (0.8, 1.0, 6, False, [0.8, 0.85, 0.9, 0.95, 1.0]),
        (20, 52, 6, True, [20, 30, 40, 50]),
        (1, 3, 6, True, [1, 2, 3]),
    ],
)
def test_ticks_are_round_numbers(
    lo: float, hi: float, count: int, integer: bool, expected: list[float]
) -> None:
    assert charts._ticks(lo, hi, count, integer=integer) == pytest.approx(expected)


def test_bar_is_clamped() -> None:
    assert "width:50.0%" in charts.bar(0.5)
    assert "width:100.0%" in charts.bar(3.0)
    assert "width:0.0%" in charts.bar(-1.0)


def test_heatmap_shades_by_share_of_the_row() -> None:
    html = charts.heatmap(["cat", "<dog>"], [[8, 2], [0, 5]])
    assert "<dog>" not in html and "&lt;dog&gt;" in html
    cells = re.findall(r"<td([^>]*)>(\d+)</td>", html)
    assert [count for _, count in cells] == ["8", "2", "0", "5"]
    alpha = {
        count: float(m[1])
        for attrs, count in cells
        if (m := re.search(r"rgba\([\d,]+,([\d.]+)\)", attrs))
    }
    assert alpha["5"] == pytest.approx(1.0)  # the whole row: full colour
    assert alpha["8"] > alpha["2"]
    assert "37,99,235" in cells[0][0] and "220,38,38" in cells[1][0]  # right blue, wrong red
    assert 'class="zero"' in cells[2][0]
    ET.fromstring(html)  # well-formed
