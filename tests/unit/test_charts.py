"""The console's SVG charts: well-formed, proportional, escaped, accessible, and honest about
having nothing to show."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sigillo.staff import charts
from sigillo.staff.charts import Series

NS = "{http://www.w3.org/2000/svg}"
TWO = (Series("TLS verified", charts.BLUE), Series("Portal", charts.VERMILLION))


def parse(figure: charts.Figure) -> ET.Element:
    return ET.fromstring(str(figure.svg))  # noqa: S314 - the code under test's own output


def bars(root: ET.Element) -> list[ET.Element]:
    return [r for r in root.iter(f"{NS}rect") if r.get("data-value") is not None]


def columns(**overrides: object) -> charts.Figure:
    args: dict[str, object] = {
        "title": "Copies per day",
        "desc": "Copies per day by method",
        "categories": ["1 Mar", "2 Mar", "3 Mar"],
        "series": TWO,
        "values": [[3, 1], [0, 0], [6, 2]],
        "category_header": "Day",
        "total_header": "Total",
        "no_data": "No copies in this period",
    }
    args.update(overrides)
    return charts.stacked_columns("c1", **args)  # type: ignore[arg-type]


def test_column_heights_are_proportional_and_stacked() -> None:
    root = parse(columns())
    rects = bars(root)
    assert [int(r.get("data-value", "")) for r in rects] == [3, 1, 6, 2]
    heights = [float(r.get("height", "")) for r in rects]
    unit = heights[0] / 3
    assert heights == pytest.approx([3 * unit, 1 * unit, 6 * unit, 2 * unit], rel=1e-3)
    # Stacked: the second segment sits right on top of the first.
    first, second = rects[0], rects[1]
    assert float(second.get("y", "")) + float(second.get("height", "")) == pytest.approx(
        float(first.get("y", ""))
    )
    # The tallest column (8) fits under the axis maximum (10).
    assert heights[2] + heights[3] == pytest.approx(8 * unit)
    assert 8 * unit < 246


def test_chart_is_an_accessible_image_with_title_and_desc() -> None:
    root = parse(columns())
    assert root.get("role") == "img"
    assert root.get("aria-labelledby") == "c1-title c1-desc"
    title = root.find(f"{NS}title")
    desc = root.find(f"{NS}desc")
    assert title is not None and title.get("id") == "c1-title" and title.text == "Copies per day"
    assert desc is not None and desc.get("id") == "c1-desc"
    # Legend as text, in the series' colours.
    texts = [t.text for t in root.iter(f"{NS}text")]
    assert "TLS verified" in texts and "Portal" in texts
    # No inline style anywhere: the console's CSP forbids it.
    assert all("style" not in el.attrib for el in root.iter())


def test_table_carries_the_same_numbers() -> None:
    figure = columns()
    assert figure.table.columns == ("Day", "TLS verified", "Portal", "Total")
    assert figure.table.rows == (
        ("1 Mar", "3", "1", "4"),
        ("2 Mar", "0", "0", "0"),
        ("3 Mar", "6", "2", "8"),
    )
    assert not figure.empty


HOSTILE = "<script>alert(1)</script>&\"'<!--"


def test_every_label_is_escaped() -> None:
    figure = charts.stacked_bars(
        "d1",
        title=f"Top {HOSTILE}",
        desc=HOSTILE,
        categories=[HOSTILE, "x" * 80],
        series=(Series(HOSTILE, charts.BLUE),),
        values=[[2], [1]],
        category_header="Domain",
        total_header="Total",
        no_data="none",
    )
    raw = str(figure.svg)
    assert "<script" not in raw and "<!--" not in raw
    root = parse(figure)  # still well-formed XML
    texts = [t.text for t in root.iter(f"{NS}text")]
    assert HOSTILE in texts  # shown as text, not markup
    titles = [t.text for t in root.iter(f"{NS}title")]
    assert "x" * 80 in titles  # the long label, shortened on the bar, is whole in its tooltip
    assert any(t and t.startswith("x" * 29) and t.endswith("…") for t in texts)


def test_horizontal_bars_are_proportional() -> None:
    figure = charts.stacked_bars(
        "d2",
        title="Portal domains",
        desc="d",
        categories=["a.example", "b.example"],
        series=TWO,
        values=[[4, 2], [3, 0]],
        category_header="Domain",
        total_header="Total",
        no_data="none",
    )
    widths = [float(r.get("width", "")) for r in bars(parse(figure))]
    assert widths[0] / 4 == pytest.approx(widths[1] / 2, rel=1e-3)
    assert widths[0] / 4 == pytest.approx(widths[2] / 3, rel=1e-3)


def test_share_bar_splits_the_whole() -> None:
    figure = charts.share_bar(
        "s1",
        title="Share",
        desc="d",
        series=TWO,
        values=[3, 1],
        label_header="Method",
        count_header="Copies",
        share_header="Share",
        no_data="none",
    )
    widths = [float(r.get("width", "")) for r in bars(parse(figure))]
    assert sum(widths) == pytest.approx(charts.WIDTH)
    assert widths[0] == pytest.approx(3 * widths[1])
    assert figure.table.rows == (("TLS verified", "3", "75.0%"), ("Portal", "1", "25.0%"))
    texts = [t.text for t in parse(figure).iter(f"{NS}text")]
    assert "TLS verified 75.0%" in texts


def test_lines_put_points_at_proportional_heights() -> None:
    figure = charts.lines(
        "l1",
        title="Registrations and replies",
        desc="d",
        categories=["1", "2", "3"],
        series=(Series("Registrations", charts.BLUE), Series("Replies", charts.VERMILLION, True)),
        values=[[0, 2], [4, 1], [2, 0]],
        category_header="Day",
        no_data="none",
    )
    root = parse(figure)
    polylines = list(root.iter(f"{NS}polyline"))
    assert len(polylines) == 2 and polylines[1].get("stroke-dasharray")
    ys = [float(p.split(",")[1]) for p in polylines[0].get("points", "").split()]
    baseline = ys[0]  # value 0
    assert baseline - ys[1] == pytest.approx(2 * (baseline - ys[2]))
    # Different marker shapes, not only different colours.
    assert len(list(root.iter(f"{NS}circle"))) >= 3 and len(bars(root)) >= 3


@pytest.mark.parametrize(
    "figure",
    [
        columns(values=[[0, 0], [0, 0], [0, 0]]),
        columns(categories=[], values=[]),
        charts.share_bar(
            "s0",
            title="t",
            desc="d",
            series=TWO,
            values=[0, 0],
            label_header="",
            count_header="",
            share_header="",
            no_data="No copies in this period",
        ),
        charts.stacked_bars(
            "h0",
            title="t",
            desc="d",
            categories=[],
            series=TWO,
            values=[],
            category_header="",
            total_header="",
            no_data="No copies in this period",
        ),
        charts.lines(
            "l0",
            title="t",
            desc="d",
            categories=["1"],
            series=TWO,
            values=[[0, 0]],
            category_header="",
            no_data="No copies in this period",
        ),
    ],
)
def test_empty_data_renders_a_no_data_chart(figure: charts.Figure) -> None:
    root = parse(figure)
    assert figure.empty
    assert root.get("role") == "img"
    assert "No copies in this period" in [t.text for t in root.iter(f"{NS}text")]
    assert bars(root) == []
    assert not list(root.iter(f"{NS}polyline"))


def test_mismatched_values_are_refused() -> None:
    with pytest.raises(ValueError, match="one value per series"):
        columns(values=[[1], [2], [3]])
    with pytest.raises(ValueError, match="never negative"):
        columns(values=[[1, -1], [0, 0], [0, 0]])


def _contrast(colour: str) -> float:
    def channel(value: int) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    lum = 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)
    return 1.05 / (lum + 0.05)


@pytest.mark.parametrize(
    "colour", [charts.BLUE, charts.GREEN, charts.VERMILLION, charts.PURPLE, charts.GREY]
)
def test_palette_has_3_to_1_contrast_on_white(colour: str) -> None:
    assert _contrast(colour) >= 3.0


@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), min_size=1, max_size=40))
def test_any_counts_give_well_formed_bars_within_the_plot(rows: list[tuple[int, int]]) -> None:
    figure = columns(categories=[str(i) for i in range(len(rows))], values=[list(r) for r in rows])
    root = parse(figure)
    for rect in bars(root):
        y, h = float(rect.get("y", "")), float(rect.get("height", ""))
        assert h > 0 and y >= 0 and y + h <= 300


@pytest.mark.parametrize(
    ("value", "top", "step"),
    [
        (0, 1, 1),
        (1, 1, 1),
        (3, 3, 1),
        (7, 8, 2),
        (8, 8, 2),
        (23, 25, 5),
        (101, 150, 50),
        (1000, 1000, 200),
    ],
)
def test_nice_axis(value: int, top: int, step: int) -> None:
    assert charts.nice_top(value) == (top, step)


def test_a_legend_wider_than_the_chart_wraps_and_the_plot_moves_down() -> None:
    many = tuple(
        Series(f"Reason number {i} with a long name", colour)
        for i, colour in enumerate((charts.BLUE, charts.VERMILLION) * 3)
    )
    root = parse(columns(series=many, values=[[1] * 6, [0] * 6, [2] * 6]))
    labels = [
        t for g in root.iter(f"{NS}g") if g.get("class") == "legend" for t in g.iter(f"{NS}text")
    ]
    assert len(labels) == 6
    rows = sorted({float(t.get("y", 0)) for t in labels})
    assert len(rows) > 1  # wrapped
    for t in labels:
        estimate = float(t.get("x", 0)) + len(t.text or "") * charts.FONT * 0.6
        assert estimate <= charts.WIDTH, t.text  # nothing drawn past the right edge
    # Every bar starts below the last legend row.
    assert min(float(r.get("y", 0)) for r in bars(root)) > rows[-1]
