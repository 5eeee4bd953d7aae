"""Charts for the console, drawn on the server as inline SVG.

The console runs no script and its Content-Security-Policy forbids inline styles, so every
colour is an SVG presentation attribute (``fill``, ``stroke``), which CSP does not govern.
Each chart is a ``role="img"`` with a ``<title>`` and a ``<desc>``, carries its legend as text,
and comes with a ``Table`` of the very same numbers for the page to show beside it: the
picture is for a glance, the table for a screen reader or an exact figure.

The palette is Okabe and Ito's, chosen to stay apart under the common colour-vision
deficiencies, with the light colours left out so every mark has at least 3:1 contrast with the
white background; stacked segments are separated by white lines, and the two line series also
differ in dash and marker shape. The SVG is built with ElementTree, which escapes every label.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup

BLUE = "#0072B2"
GREEN = "#009E73"
VERMILLION = "#D55E00"
PURPLE = "#CC79A7"
GREY = "#4D4D4D"
INK = "#1B1F24"
MUTED = "#4A5260"
GRID = "#C4CAD3"
PAPER = "#FFFFFF"

WIDTH = 720
FONT = 13
LABEL_LIMIT = 30
"""Characters of a category label drawn on a horizontal bar chart (the table has it whole)."""
MIN_MARK = 1.0
"""A count that is not zero is never drawn thinner than this, however small its share."""


@dataclass(frozen=True)
class Series:
    label: str
    colour: str
    dashed: bool = False
    """For line charts: drawn dashed, with square markers instead of round ones."""


@dataclass(frozen=True)
class Table:
    caption: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Figure:
    ident: str
    """Unique on the page: the chart's ids (title, desc) derive from it."""
    title: str
    svg: Markup
    table: Table
    empty: bool


Number = Callable[[float], str]


def _plain(value: float) -> str:
    return f"{value:g}"


def _percent(value: float) -> str:
    return f"{value * 100:.1f}%"


def nice_top(value: float) -> tuple[int, int]:
    """A round axis maximum at or above ``value`` and its tick step (1, 2 or 5 x 10^k),
    with at most five steps."""
    if value <= 0:
        return 1, 1
    magnitude = 10 ** max(0, math.floor(math.log10(value)) - 1)
    while True:
        for factor in (1, 2, 5):
            step = factor * magnitude
            steps = math.ceil(value / step)
            if steps <= 5:
                return steps * step, step
        magnitude *= 10


def _svg(ident: str, title: str, desc: str, height: int) -> ET.Element:
    svg = ET.Element(
        "svg",
        {
            "xmlns": "http://www.w3.org/2000/svg",
            "viewBox": f"0 0 {WIDTH} {height}",
            "width": "100%",
            "role": "img",
            "aria-labelledby": f"{ident}-title {ident}-desc",
            "class": "chart",
            "font-size": str(FONT),
        },
    )
    ET.SubElement(svg, "title", {"id": f"{ident}-title"}).text = title
    ET.SubElement(svg, "desc", {"id": f"{ident}-desc"}).text = desc
    return svg


def _text(
    parent: ET.Element, x: float, y: float, value: str, anchor: str = "start", **extra: str
) -> ET.Element:
    attrs = {"x": _n(x), "y": _n(y), "fill": INK, "text-anchor": anchor, **extra}
    element = ET.SubElement(parent, "text", attrs)
    element.text = value
    return element


def _n(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


LEGEND_ROW = FONT + 10.0
"""Distance between legend rows: a legend wider than the chart wraps instead of being cut."""


def _legend_rows(series: Sequence[Series], line: bool = False) -> list[tuple[float, int, Series]]:
    """Where each legend entry goes: (x, row, series)."""
    x, row = 0.0, 0
    placed = []
    for item in series:
        # A rough width: labels are short words, and the table below carries them as well.
        width = (26 if line else 18) + len(item.label) * FONT * 0.6
        if x > 0 and x + width > WIDTH:
            x, row = 0.0, row + 1
        placed.append((x, row, item))
        x += width + 24
    return placed


def _legend_extra(series: Sequence[Series], line: bool = False) -> float:
    """The height the legend's rows after its first one take."""
    placed = _legend_rows(series, line)
    return placed[-1][1] * LEGEND_ROW if placed else 0.0


def _legend(svg: ET.Element, series: Sequence[Series], y: float, line: bool = False) -> None:
    for x, row, item in _legend_rows(series, line):
        baseline = y + row * LEGEND_ROW
        group = ET.SubElement(svg, "g", {"class": "legend"})
        if line:
            _line_sample(group, x, baseline - 4, item)
            x += 26
        else:
            ET.SubElement(
                group,
                "rect",
                {
                    "x": _n(x),
                    "y": _n(baseline - 11),
                    "width": "12",
                    "height": "12",
                    "fill": item.colour,
                },
            )
            x += 18
        _text(group, x, baseline, item.label)


def _line_sample(group: ET.Element, x: float, y: float, item: Series) -> None:
    attrs = {
        "x1": _n(x),
        "y1": _n(y),
        "x2": _n(x + 20),
        "y2": _n(y),
        "stroke": item.colour,
        "stroke-width": "3",
    }
    if item.dashed:
        attrs["stroke-dasharray"] = "6 3"
    ET.SubElement(group, "line", attrs)
    _marker(group, x + 10, y, item)


def _marker(parent: ET.Element, x: float, y: float, item: Series) -> ET.Element:
    if item.dashed:
        return ET.SubElement(
            parent,
            "rect",
            {
                "x": _n(x - 4),
                "y": _n(y - 4),
                "width": "8",
                "height": "8",
                "fill": item.colour,
                "stroke": PAPER,
            },
        )
    return ET.SubElement(
        parent,
        "circle",
        {"cx": _n(x), "cy": _n(y), "r": "4.5", "fill": item.colour, "stroke": PAPER},
    )


def _no_data(svg: ET.Element, top: float, height: float, message: str) -> None:
    ET.SubElement(
        svg,
        "rect",
        {
            "x": "1",
            "y": _n(top),
            "width": str(WIDTH - 2),
            "height": _n(height),
            "fill": PAPER,
            "stroke": GRID,
            "class": "no-data",
        },
    )
    _text(svg, WIDTH / 2, top + height / 2 + FONT / 2, message, "middle", fill=MUTED)


def _tooltip(element: ET.Element, text: str) -> None:
    ET.SubElement(element, "title").text = text


def _finish(svg: ET.Element) -> Markup:
    return Markup(ET.tostring(svg, encoding="unicode"))  # noqa: S704 - built by ElementTree, escaped


def _check(
    categories: Sequence[str], series: Sequence[Series], values: Sequence[Sequence[int]]
) -> None:
    if len(values) != len(categories) or any(len(row) != len(series) for row in values):
        raise ValueError("one value per series for every category")
    if any(v < 0 for row in values for v in row):
        raise ValueError("counts are never negative")


def stacked_columns(
    ident: str,
    *,
    title: str,
    desc: str,
    categories: Sequence[str],
    series: Sequence[Series],
    values: Sequence[Sequence[int]],
    category_header: str,
    total_header: str,
    no_data: str,
    number: Number = _plain,
    height: int = 300,
) -> Figure:
    """Vertical bars, one per category (a day), stacked by series (a delivery method)."""
    _check(categories, series, values)
    svg = _svg(ident, title, desc, height)
    _legend(svg, series, FONT + 2)
    left, right, top, bottom = 44.0, 28.0, FONT * 2 + 14.0 + _legend_extra(series), 40.0
    plot_w, plot_h = WIDTH - left - right, height - top - bottom
    totals = [sum(row) for row in values]
    empty = not categories or max(totals, default=0) == 0
    if empty:
        _no_data(svg, top, plot_h, no_data)
    else:
        axis_top, step = nice_top(max(totals))
        _y_axis(svg, left, top, plot_w, plot_h, axis_top, step, number)
        slot = plot_w / len(categories)
        bar_w = max(2.0, slot * 0.7)
        every = max(1, math.ceil(len(categories) / 10))
        bars = ET.SubElement(svg, "g", {"class": "bars"})
        for i, (category, row) in enumerate(zip(categories, values, strict=True)):
            x = left + i * slot + (slot - bar_w) / 2
            y = top + plot_h
            for item, value in zip(series, row, strict=True):
                if value == 0:
                    continue
                h = max(MIN_MARK, value / axis_top * plot_h)
                y -= h
                rect = ET.SubElement(
                    bars,
                    "rect",
                    {
                        "x": _n(x),
                        "y": _n(y),
                        "width": _n(bar_w),
                        "height": _n(h),
                        "fill": item.colour,
                        "stroke": PAPER,
                        "stroke-width": "1",
                        "data-value": str(value),
                    },
                )
                _tooltip(rect, f"{category}: {item.label} {number(value)}")
            if _labelled(i, len(categories), every):
                _text(svg, x + bar_w / 2, top + plot_h + FONT + 6, category, "middle")
    table = Table(
        title,
        (category_header, *(s.label for s in series), total_header),
        tuple(
            (category, *(number(v) for v in row), number(total))
            for category, row, total in zip(categories, values, totals, strict=True)
        ),
    )
    return Figure(ident, title, _finish(svg), table, empty)


def _labelled(i: int, count: int, every: int) -> bool:
    """Whether category ``i`` gets an axis label: every ``every``-th and the last, leaving out
    one that would crowd the last."""
    last = count - 1
    return i == last or (i % every == 0 and last - i >= every)


def _y_axis(
    svg: ET.Element,
    left: float,
    top: float,
    plot_w: float,
    plot_h: float,
    axis_top: int,
    step: int,
    number: Number,
) -> None:
    grid = ET.SubElement(svg, "g", {"class": "grid"})
    for tick in range(0, axis_top + 1, step):
        y = top + plot_h - tick / axis_top * plot_h
        ET.SubElement(
            grid,
            "line",
            {
                "x1": _n(left),
                "x2": _n(left + plot_w),
                "y1": _n(y),
                "y2": _n(y),
                "stroke": GRID if tick else MUTED,
                "stroke-width": "1",
            },
        )
        _text(grid, left - 6, y + FONT / 3, number(tick), "end")


def share_bar(
    ident: str,
    *,
    title: str,
    desc: str,
    series: Sequence[Series],
    values: Sequence[int],
    label_header: str,
    count_header: str,
    share_header: str,
    no_data: str,
    number: Number = _plain,
    percent: Number = _percent,
) -> Figure:
    """One horizontal bar split into each series' share of the whole, percentages in text."""
    if len(values) != len(series) or any(v < 0 for v in values):
        raise ValueError("one non-negative value per series")
    total = sum(values)
    shown = [
        Series(f"{s.label} {percent(v / total)}" if total else s.label, s.colour)
        for s, v in zip(series, values, strict=True)
    ]
    height = int(96 + _legend_extra(shown))
    svg = _svg(ident, title, desc, height)
    top, bar_h = 10.0, 36.0
    if total == 0:
        _no_data(svg, top, bar_h, no_data)
    else:
        x = 0.0
        bars = ET.SubElement(svg, "g", {"class": "bars"})
        for item, value in zip(series, values, strict=True):
            if value == 0:
                continue
            w = max(MIN_MARK, value / total * WIDTH)
            rect = ET.SubElement(
                bars,
                "rect",
                {
                    "x": _n(x),
                    "y": _n(top),
                    "width": _n(w),
                    "height": _n(bar_h),
                    "fill": item.colour,
                    "stroke": PAPER,
                    "stroke-width": "2",
                    "data-value": str(value),
                },
            )
            _tooltip(rect, f"{item.label}: {percent(value / total)} ({number(value)})")
            x += w
    _legend(svg, shown, top + bar_h + 30)
    table = Table(
        title,
        (label_header, count_header, share_header),
        tuple(
            (s.label, number(v), percent(v / total) if total else "–")
            for s, v in zip(series, values, strict=True)
        ),
    )
    return Figure(ident, title, _finish(svg), table, total == 0)


def stacked_bars(
    ident: str,
    *,
    title: str,
    desc: str,
    categories: Sequence[str],
    series: Sequence[Series],
    values: Sequence[Sequence[int]],
    category_header: str,
    total_header: str,
    no_data: str,
    number: Number = _plain,
) -> Figure:
    """Horizontal bars, one per category (a domain), longest first as given, split by series
    (a reason)."""
    _check(categories, series, values)
    row_h, label_w = 28.0, 230.0
    top = FONT * 2 + 14.0 + _legend_extra(series)
    height = int(top + max(len(categories), 3) * row_h + 8)
    svg = _svg(ident, title, desc, height)
    _legend(svg, series, FONT + 2)
    totals = [sum(row) for row in values]
    empty = not categories or max(totals, default=0) == 0
    if empty:
        _no_data(svg, top, height - top - 8, no_data)
    else:
        axis_top = max(totals)
        plot_w = WIDTH - label_w - 48
        bars = ET.SubElement(svg, "g", {"class": "bars"})
        for i, (category, row, total) in enumerate(zip(categories, values, totals, strict=True)):
            y = top + i * row_h
            shown = category if len(category) <= LABEL_LIMIT else category[: LABEL_LIMIT - 1] + "…"
            label = _text(svg, label_w - 8, y + row_h / 2 + FONT / 3, shown, "end")
            if shown != category:
                _tooltip(label, category)
            x = label_w
            for item, value in zip(series, row, strict=True):
                if value == 0:
                    continue
                w = max(MIN_MARK, value / axis_top * plot_w)
                rect = ET.SubElement(
                    bars,
                    "rect",
                    {
                        "x": _n(x),
                        "y": _n(y + 4),
                        "width": _n(w),
                        "height": _n(row_h - 8),
                        "fill": item.colour,
                        "stroke": PAPER,
                        "stroke-width": "1",
                        "data-value": str(value),
                    },
                )
                _tooltip(rect, f"{category}: {item.label} {number(value)}")
                x += w
            _text(svg, x + 6, y + row_h / 2 + FONT / 3, number(total))
    table = Table(
        title,
        (category_header, *(s.label for s in series), total_header),
        tuple(
            (category, *(number(v) for v in row), number(total))
            for category, row, total in zip(categories, values, totals, strict=True)
        ),
    )
    return Figure(ident, title, _finish(svg), table, empty)


def lines(
    ident: str,
    *,
    title: str,
    desc: str,
    categories: Sequence[str],
    series: Sequence[Series],
    values: Sequence[Sequence[int]],
    category_header: str,
    no_data: str,
    number: Number = _plain,
    height: int = 240,
) -> Figure:
    """One line per series over the categories (days), with a marker on every point."""
    _check(categories, series, values)
    svg = _svg(ident, title, desc, height)
    _legend(svg, series, FONT + 2, line=True)
    left, right, top, bottom = 44.0, 28.0, FONT * 2 + 14.0 + _legend_extra(series, True), 40.0
    plot_w, plot_h = WIDTH - left - right, height - top - bottom
    peak = max((v for row in values for v in row), default=0)
    empty = not categories or peak == 0
    if empty:
        _no_data(svg, top, plot_h, no_data)
    else:
        axis_top, step = nice_top(peak)
        _y_axis(svg, left, top, plot_w, plot_h, axis_top, step, number)
        slot = plot_w / len(categories)
        xs = [left + slot * (i + 0.5) for i in range(len(categories))]
        every = max(1, math.ceil(len(categories) / 10))
        for i, category in enumerate(categories):
            if _labelled(i, len(categories), every):
                _text(svg, xs[i], top + plot_h + FONT + 6, category, "middle")
        for s, item in enumerate(series):
            group = ET.SubElement(svg, "g", {"class": "series"})
            points = [
                (x, top + plot_h - row[s] / axis_top * plot_h)
                for x, row in zip(xs, values, strict=True)
            ]
            attrs = {
                "points": " ".join(f"{_n(x)},{_n(y)}" for x, y in points),
                "fill": "none",
                "stroke": item.colour,
                "stroke-width": "2.5",
            }
            if item.dashed:
                attrs["stroke-dasharray"] = "6 3"
            ET.SubElement(group, "polyline", attrs)
            for (x, y), category, row in zip(points, categories, values, strict=True):
                marker = _marker(group, x, y, item)
                marker.set("data-value", str(row[s]))
                _tooltip(marker, f"{category}: {item.label} {number(row[s])}")
    table = Table(
        title,
        (category_header, *(s.label for s in series)),
        tuple(
            (category, *(number(v) for v in row))
            for category, row in zip(categories, values, strict=True)
        ),
    )
    return Figure(ident, title, _finish(svg), table, empty)
