"""Line charts as inline SVG, drawn on the server.

The dashboard's pages are server-rendered and refreshed over SSE; a chart is one more
fragment of HTML, so it needs no JavaScript library, no canvas and no client-side
state, and what a test reads (``data-*`` attributes, the ``<title>`` of each line) is
what a person sees. The charts are simple on purpose: time on x, one unit on y,
a few labelled lines; a gap (None) breaks a line instead of drawing a zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

from markupsafe import Markup

from corral.units import format_size

WIDTH, HEIGHT = 560, 180
LEFT, RIGHT, TOP, BOTTOM = 56, 10, 10, 22
COLOURS = ("#1f6feb", "#d97706", "#067647", "#b42318", "#7a5af8", "#667085")


@dataclass(frozen=True)
class Chart:
    title: str
    unit: str  # "s", "B", "tok/s", "req", ...
    x: Sequence[float]  # seconds since the epoch, or any increasing numbers
    lines: Mapping[str, Sequence[float | None]]
    x_is_time: bool = True


def fmt(value: float, unit: str) -> str:
    if unit == "B":
        return format_size(int(value)) if value else "0"
    if unit == "s":
        if value == 0:
            return "0"
        if value < 1e-3:
            return f"{value * 1e6:.0f} µs"
        if value < 1:
            return f"{value * 1e3:.3g} ms"
        return f"{value:.3g} s"
    return f"{value:.3g}{' ' + unit if unit else ''}"


def _nice_top(value: float, binary: bool = False) -> float:
    """A round number at or above ``value`` (bytes: round in KiB, MiB, GiB)."""
    if value <= 0:
        return 1.0
    if binary and value >= 1024:
        scale = 1024.0 ** int(math.log(value, 1024))
        return _nice_top(value / scale) * scale
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * power:
            return step * power
    return 10.0 * power


def _x_label(value: float, is_time: bool) -> str:
    if not is_time:
        return f"{value:g}"
    return datetime.fromtimestamp(value, UTC).strftime("%H:%M")


def svg(chart: Chart) -> Markup:
    values = [v for line in chart.lines.values() for v in line if v is not None]
    top = _nice_top(max(values, default=0.0), binary=chart.unit == "B")
    x0, x1 = (chart.x[0], chart.x[-1]) if chart.x else (0.0, 1.0)
    span = (x1 - x0) or 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x0) / span * plot_w

    def py(y: float) -> float:
        return TOP + plot_h - y / top * plot_h

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(chart.title)}" data-points="{len(values)}">'
    ]
    for i in range(5):  # grid and y labels
        y = top * i / 4
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{py(y):.1f}" y2="{py(y):.1f}" '
            f'stroke="#eaecf0"/><text x="{LEFT - 4}" y="{py(y) + 4:.1f}" '
            f'text-anchor="end" class="tick">{escape(fmt(y, chart.unit))}</text>'
        )
    for i in range(5):  # x labels
        x = x0 + span * i / 4
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        parts.append(
            f'<text x="{px(x):.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}" class="tick">'
            f"{escape(_x_label(x, chart.x_is_time))}</text>"
        )
    for (name, line), colour in zip(chart.lines.items(), COLOURS * 4, strict=False):
        runs: list[list[str]] = [[]]
        for x, value in zip(chart.x, line, strict=False):
            if value is None:
                runs.append([])
            else:
                runs[-1].append(f"{px(x):.1f},{py(value):.1f}")
        for run in runs:
            if len(run) == 1:
                cx, cy = run[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{colour}"/>')
            elif run:
                parts.append(
                    f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" '
                    f'points="{" ".join(run)}"><title>{escape(name)}</title></polyline>'
                )
    parts.append("</svg>")
    legend = "".join(
        f'<span class="key"><i style="background:{c}"></i>{escape(n)}</span>'
        for n, c in zip(chart.lines, COLOURS * 4, strict=False)
    )
    return Markup(
        f'<figure class="chart-box" data-chart="{escape(chart.title)}">'
        f"<figcaption>{escape(chart.title)} <span class='legend'>{legend}</span></figcaption>"
        f"{''.join(parts)}</figure>"
    )
