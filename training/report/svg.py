"""SVG drawing for the training report: axes panels, legends and colours.

Plots are inline SVG written as text (no plotting library): a :class:`_Panel`
maps data to pixels and draws its frame, lines, dots and bars; the helpers
below add legends, the ``<svg>`` element itself and colour scales.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from training.report.markup import _MISSING, _esc

# Segment colours (Tableau 10), taken in order of segment id.
_PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)


def _f(value: float) -> str:
    # One decimal of a pixel is invisible; fewer characters keep the file small.
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _ticks(lo: float, hi: float, target: int = 5) -> np.ndarray:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / target
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    return np.arange(start, hi + step * 1e-6, step)


def _tick_label(value: float, ticks: np.ndarray) -> str:
    step = float(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    decimals = 0
    while decimals < 6 and abs(round(step * 10**decimals) - step * 10**decimals) > 1e-6:
        decimals += 1
    if abs(value) < step * 1e-6:
        value = 0.0  # arange drift would print "-0"
    return f"{value:.{decimals}f}"


def _nice_range(
    values: np.ndarray, include: Sequence[float] = ()
) -> tuple[float, float]:
    finite = np.asarray(values, dtype=np.float64)
    finite = np.r_[finite[np.isfinite(finite)], list(include)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    ticks = _ticks(lo, hi)
    step = float(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    return math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step


class _Panel:
    """One set of axes: data-to-pixel mapping plus frame, ticks and labels."""

    def __init__(
        self,
        box: tuple[float, float, float, float],
        xlim: tuple[float, float],
        ylim: tuple[float, float],
        *,
        title: str = "",
        xlabel: str = "",
        ylabel: str = "",
        xticks: Sequence[tuple[float, str]] | None = None,
        yticks: Sequence[tuple[float, str]] | None = None,
    ) -> None:
        self.left, self.top, self.width, self.height = box
        self.xlim, self.ylim = xlim, ylim
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.xticks = xticks if xticks is not None else self._auto(xlim)
        self.yticks = yticks if yticks is not None else self._auto(ylim)

    @staticmethod
    def _auto(lim: tuple[float, float]) -> list[tuple[float, str]]:
        ticks = _ticks(*lim)
        return [
            (float(t), _tick_label(t, ticks)) for t in ticks if lim[0] <= t <= lim[1]
        ]

    def px(self, x: Any) -> np.ndarray:
        lo, hi = self.xlim
        return (
            self.left + (np.asarray(x, dtype=np.float64) - lo) / (hi - lo) * self.width
        )

    def py(self, y: Any) -> np.ndarray:
        lo, hi = self.ylim
        scaled = (np.asarray(y, dtype=np.float64) - lo) / (hi - lo)
        return self.top + self.height - scaled * self.height

    def frame(self) -> str:
        """Grid, axes box, tick labels, axis labels and title."""
        parts = []
        right, bottom = self.left + self.width, self.top + self.height
        for value, label in self.yticks:
            y = _f(float(self.py(value)))
            parts.append(
                f'<line x1="{_f(self.left)}" x2="{_f(right)}" y1="{y}" y2="{y}" '
                'class="grid"/>'
                f'<text x="{_f(self.left - 5)}" y="{y}" class="tick" '
                f'text-anchor="end" dy=".32em">{_esc(label)}</text>'
            )
        for value, label in self.xticks:
            x = _f(float(self.px(value)))
            parts.append(
                f'<line x1="{x}" x2="{x}" y1="{_f(self.top)}" y2="{_f(bottom)}" '
                'class="grid"/>'
                f'<text x="{x}" y="{_f(bottom + 14)}" class="tick" '
                f'text-anchor="middle">{_esc(label)}</text>'
            )
        parts.append(
            f'<rect x="{_f(self.left)}" y="{_f(self.top)}" width="{_f(self.width)}" '
            f'height="{_f(self.height)}" class="axes"/>'
        )
        if self.xlabel:
            parts.append(
                f'<text x="{_f(self.left + self.width / 2)}" y="{_f(bottom + 32)}" '
                f'text-anchor="middle" class="label">{_esc(self.xlabel)}</text>'
            )
        if self.ylabel:
            cx, cy = _f(self.left - 42), _f(self.top + self.height / 2)
            parts.append(
                f'<text transform="translate({cx},{cy}) rotate(-90)" '
                f'text-anchor="middle" class="label">{_esc(self.ylabel)}</text>'
            )
        if self.title:
            parts.append(
                f'<text x="{_f(self.left)}" y="{_f(self.top - 8)}" class="title">'
                f"{_esc(self.title)}</text>"
            )
        return "".join(parts)

    def line(
        self,
        x: Any,
        y: Any,
        color: str,
        *,
        width: float = 2.0,
        dashed: bool = False,
        markers: bool = False,
        tooltip: str = "",
    ) -> str:
        """A polyline through the points (NaNs skipped), optionally with dots."""
        xs, ys = self.px(x), self.py(y)
        ok = np.isfinite(xs) & np.isfinite(ys)
        xs, ys = xs[ok], ys[ok]
        if len(xs) == 0:
            return ""
        path = "M" + "L".join(f"{_f(a)},{_f(b)}" for a, b in zip(xs, ys, strict=True))
        dash = ' stroke-dasharray="5 4"' if dashed else ""
        title = f"<title>{_esc(tooltip)}</title>" if tooltip else ""
        out = (
            f'<path d="{path}" fill="none" stroke="{color}" '
            f'stroke-width="{_f(width)}"{dash}>{title}</path>'
        )
        if markers:
            out += self.dots(x, y, color, radius=3.5, opacity=1.0)
        return out

    def dots(
        self, x: Any, y: Any, color: str, *, radius: float = 2.0, opacity: float = 0.6
    ) -> str:
        """Circles at the points, one group so the style is written once."""
        xs, ys = self.px(x), self.py(y)
        ok = np.isfinite(xs) & np.isfinite(ys)
        circles = "".join(
            f'<circle cx="{_f(a)}" cy="{_f(b)}" r="{_f(radius)}"/>'
            for a, b in zip(xs[ok], ys[ok], strict=True)
        )
        return f'<g fill="{color}" fill-opacity="{opacity:g}">{circles}</g>'

    def rect(
        self, x0: float, x1: float, y0: float, y1: float, color: str, tooltip: str = ""
    ) -> str:
        """A filled rectangle between data coordinates (bars, cells)."""
        a, b = sorted((float(self.px(x0)), float(self.px(x1))))
        c, d = sorted((float(self.py(y0)), float(self.py(y1))))
        title = f"<title>{_esc(tooltip)}</title>" if tooltip else ""
        return (
            f'<rect x="{_f(a)}" y="{_f(c)}" width="{_f(b - a)}" height="{_f(d - c)}" '
            f'fill="{color}">{title}</rect>'
        )


def _legend(
    x: float,
    y: float,
    entries: Sequence[tuple[str, str]],
    *,
    dashed: Sequence[bool] = (),
    dots: bool = False,
) -> str:
    """A legend box at top-left (x, y): line swatches, or dots for scatters."""
    if not entries:
        return ""
    width = _legend_width([label for label, _ in entries])
    parts = [
        f'<rect x="{_f(x)}" y="{_f(y)}" width="{_f(width)}" '
        f'height="{_f(8 + 16 * len(entries))}" class="legend"/>'
    ]
    for i, (label, color) in enumerate(entries):
        row = y + 12 + 16 * i
        dash = ' stroke-dasharray="5 4"' if i < len(dashed) and dashed[i] else ""
        swatch = (
            f'<circle cx="{_f(x + 14)}" cy="{_f(row)}" r="5" fill="{color}"/>'
            if dots
            else f'<line x1="{_f(x + 6)}" x2="{_f(x + 22)}" y1="{_f(row)}" '
            f'y2="{_f(row)}" stroke="{color}" stroke-width="3"{dash}/>'
        )
        parts.append(
            swatch
            + f'<text x="{_f(x + 27)}" y="{_f(row)}" dy=".32em" class="tick">'
            + f"{_esc(label)}</text>"
        )
    return "".join(parts)


def _legend_width(labels: Sequence[str]) -> float:
    # 6.3 px per character of 11 px sans-serif errs wide: boxes never clip text.
    return 30 + 6.3 * max((len(label) for label in labels), default=0)


def _svg(
    name: str, width: float, height: float, body: Sequence[str], label: str
) -> str:
    # No xmlns: inline SVG in HTML5 does not need it, and the report then
    # contains no URL at all.
    return (
        f'<svg class="plot" data-plot="{name}" viewBox="0 0 {_f(width)} {_f(height)}" '
        f'width="{_f(width)}" height="{_f(height)}" role="img" '
        f'aria-label="{_esc(label)}">{"".join(body)}</svg>'
    )


def _mix(low: str, high: str, t: float) -> str:
    """Colour ``t`` of the way from ``low`` to ``high`` (hex colours)."""
    t = min(max(t, 0.0), 1.0)
    a = [int(low[i : i + 2], 16) for i in (1, 3, 5)]
    b = [int(high[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(
        f"{round(p + (q - p) * t):02x}" for p, q in zip(a, b, strict=True)
    )


def _diverging(value: float, limit: float = 2.0) -> str:
    """Blue below zero, white at zero, red above (clipped at +-``limit``)."""
    if not math.isfinite(value):
        return "#eeeeee"
    t = max(-1.0, min(1.0, value / limit))
    return _mix("#ffffff", "#b2182b", t) if t >= 0 else _mix("#ffffff", "#2166ac", -t)


def _compact(value: float) -> str:
    """Short cell text: 3 significant digits, k/M suffixes."""
    if not math.isfinite(value):
        return _MISSING
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:.3g}M"
    if magnitude >= 1e4:
        return f"{value / 1e3:.3g}k"
    return f"{value:.3g}"
