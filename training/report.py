"""The training report: one self-contained HTML file per training run.

The report is meant to be mailed, attached to a ticket or opened from a CI
artifact years later, so it references nothing outside itself: every plot is an
inline SVG drawn by this module (axes, lines, dots, bars) rather than with
matplotlib. That keeps the package free of a plotting dependency (and its second
of import time), keeps the file small and crisp at any zoom, and makes the output
plain text a test can inspect.

The module has two halves. The numbers (ROC and PR points, reliability bins, lift
per decile, SHAP importances, the PCA projection, segment profile gaps) come from
pure functions that unit tests check against scikit-learn. The SVG and HTML
rendering below them only draws what those functions return.
"""

from __future__ import annotations

import html
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.decomposition import PCA

from core import registry
from core.registry import Segment, SegmenterBundle

if TYPE_CHECKING:
    from training.pipeline import TrainResult

log = logging.getLogger(__name__)

_MISSING = "\N{EN DASH}"  # shown for absent or undefined values

DEFAULT_TITLE = "segscore training report"

# Rows scored for SHAP: TreeSHAP costs trees x leaves x depth per row (about 1 s
# for 2000 rows of a 250-tree booster), and 2000 rows are plenty to rank features.
SHAP_SAMPLE = 2000
# Points drawn per feature in the SHAP dot plot and in the PCA scatter: beyond
# these the SVG grows by megabytes without showing more.
SHAP_DOTS = 400
PCA_SAMPLE = 5000
# Features shown in the SHAP dot plot (the bar chart shows all of them).
SHAP_DOT_FEATURES = 12
# Vertices per curve: 100k holdout rows give ~100k distinct thresholds, far more
# than a 400-pixel plot can show.
CURVE_POINTS = 400

# Contenders in the propensity section: (key prefix in the metrics, label, colour).
MODEL, LOGISTIC, RECENCY_FREQUENCY = "model", "logistic", "recency_frequency"
_CONTENDERS: dict[str, tuple[str, str, str]] = {
    MODEL: ("", "LightGBM (calibrated)", "#4e79a7"),
    RECENCY_FREQUENCY: ("baseline_", "Recency-frequency baseline", "#59a14f"),
    LOGISTIC: ("logistic_", "Logistic regression", "#f28e2b"),
}
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


# --------------------------------------------------------------------------------
# The numbers
# --------------------------------------------------------------------------------


def _threshold_counts(
    labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """False and true positives above each distinct score, highest score first.

    The same construction as scikit-learn's ``_binary_clf_curve``, so the curves
    below match ``roc_curve``/``precision_recall_curve`` point for point.
    """
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1 or len(y) == 0:
        raise ValueError("labels and scores: need two equal, non-empty 1-D arrays")
    order = np.argsort(s, kind="mergesort")[::-1]
    s, y = s[order], y[order]
    # The last row of each run of tied scores: a threshold admits all ties at once.
    ends = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[ends]
    fps = 1.0 + ends - tps
    return fps, tps


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve: false and true positive rates at every distinct threshold.

    Equal to ``sklearn.metrics.roc_curve(labels, scores, drop_intermediate=False)``
    (including its leading (0, 0) point).

    Args:
        labels: 0/1 outcomes.
        scores: Any score where higher means more likely positive.

    Returns:
        ``(fpr, tpr)``, both increasing.
    """
    fps, tps = _threshold_counts(labels, scores)
    if fps[-1] == 0 or tps[-1] == 0:
        raise ValueError("labels: the ROC curve needs both classes")
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]


def pr_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The precision-recall curve at every distinct threshold.

    Equal to the first two outputs of ``sklearn.metrics.precision_recall_curve``:
    recall decreasing, ending in the conventional (recall 0, precision 1) point.

    Args:
        labels: 0/1 outcomes.
        scores: Any score where higher means more likely positive.

    Returns:
        ``(precision, recall)``.
    """
    fps, tps = _threshold_counts(labels, scores)
    if tps[-1] == 0:
        raise ValueError("labels: the precision-recall curve needs a positive")
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0]


@dataclass(frozen=True)
class CalibrationBins:
    """A reliability diagram's non-empty bins (uniform bins on [0, 1]).

    Attributes:
        bin: Index of each bin (0 is [0, 0.1] with 10 bins).
        predicted: Mean predicted probability in the bin.
        observed: Share of positives in the bin.
        count: Rows in the bin.
    """

    bin: np.ndarray
    predicted: np.ndarray
    observed: np.ndarray
    count: np.ndarray


def calibration_bins(
    labels: np.ndarray, probabilities: np.ndarray, n_bins: int = 10
) -> CalibrationBins:
    """Bin predicted probabilities uniformly and compare with observed rates.

    Bins as ``sklearn.calibration.calibration_curve(strategy="uniform")`` does
    (an edge value falls in the lower bin), and like it drops empty bins;
    ``observed``/``predicted`` equal its ``prob_true``/``prob_pred``.
    """
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probabilities, dtype=np.float64)
    if p.size and (p.min() < 0 or p.max() > 1):
        raise ValueError("probabilities: values outside [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], p)
    count = np.bincount(ids, minlength=n_bins)
    sums = np.bincount(ids, weights=p, minlength=n_bins)
    positives = np.bincount(ids, weights=y, minlength=n_bins)
    used = count > 0
    return CalibrationBins(
        bin=np.flatnonzero(used),
        predicted=sums[used] / count[used],
        observed=positives[used] / count[used],
        count=count[used],
    )


@dataclass(frozen=True)
class LiftTable:
    """Positive rate and lift per score group, best-scored group first.

    Attributes:
        size: Rows per group.
        rate: Share of positives in the group.
        lift: ``rate`` over the overall rate.
        cumulative_lift: Positive rate of this and all better groups over the
            overall rate (the lift of targeting the top k groups).
    """

    size: np.ndarray
    rate: np.ndarray
    lift: np.ndarray
    cumulative_lift: np.ndarray


def lift_by_decile(
    labels: np.ndarray, scores: np.ndarray, n_groups: int = 10
) -> LiftTable:
    """Sort by score (highest first, ties in row order) and cut into ``n_groups``.

    Groups differ in size by at most one row (earlier groups take the extra rows).
    With ``len(labels)`` divisible by 10 the first lift equals
    :func:`training.propensity.lift_at`.
    """
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if len(y) < n_groups:
        raise ValueError(f"labels: {len(y)} rows are too few for {n_groups} groups")
    base = float(y.mean())
    if base == 0.0:
        raise ValueError("labels: lift needs at least one positive")
    ordered = y[np.argsort(-s, kind="stable")]
    groups = np.array_split(ordered, n_groups)
    size = np.array([len(g) for g in groups])
    positives = np.array([g.sum() for g in groups])
    rate = positives / size
    cumulative = np.cumsum(positives) / np.cumsum(size)
    return LiftTable(
        size=size, rate=rate, lift=rate / base, cumulative_lift=cumulative / base
    )


def k_selection(metrics: dict[str, float]) -> list[tuple[int, float, float]]:
    """``(k, silhouette, davies_bouldin)`` for each k the segmenter tried, by k."""
    found: list[tuple[int, float, float]] = []
    for key, value in metrics.items():
        match = re.fullmatch(r"silhouette_k(\d+)", key)
        if match is None:
            continue
        k = int(match.group(1))
        db = metrics.get(f"davies_bouldin_k{k}", float("nan"))
        found.append((k, float(value), float(db)))
    return sorted(found)


@dataclass(frozen=True)
class ShapSummary:
    """Exact TreeSHAP values on a sample of rows, features by importance.

    Attributes:
        features: Feature names, highest mean |SHAP| first.
        mean_abs: Mean |SHAP| (log-odds) of each feature, same order.
        values: SHAP values, rows x ``features``.
        data: The feature values of the same cells (NaN where missing).
        base_value: The booster's expected margin.
    """

    features: list[str]
    mean_abs: np.ndarray
    values: np.ndarray
    data: np.ndarray
    base_value: float


def shap_summary(
    booster: lgb.Booster,
    frame: pd.DataFrame,
    features: Sequence[str],
    sample_size: int = SHAP_SAMPLE,
    seed: int = 0,
) -> ShapSummary:
    """TreeSHAP contributions of ``features`` on at most ``sample_size`` rows.

    LightGBM's ``pred_contrib`` computes exact TreeSHAP itself (one column per
    feature plus the base value), so the ``shap`` plotting stack is not needed.
    """
    features = list(features)
    data = frame[features].to_numpy(dtype=np.float64)
    if len(data) > sample_size:
        rows = np.random.default_rng(seed).choice(len(data), sample_size, replace=False)
        data = data[np.sort(rows)]
    contrib = np.asarray(booster.predict(data, pred_contrib=True))
    values, base = contrib[:, :-1], float(contrib[0, -1]) if len(contrib) else 0.0
    mean_abs = np.abs(values).mean(axis=0)
    order = np.argsort(-mean_abs, kind="stable")
    return ShapSummary(
        features=[features[i] for i in order],
        mean_abs=mean_abs[order],
        values=values[:, order],
        data=data[:, order],
        base_value=base,
    )


@dataclass(frozen=True)
class Projection:
    """Users in the first two principal components of the segmenter's space.

    Attributes:
        points: Projected sample, rows x 2.
        labels: Segment id of each point.
        centroids: The KMeans centroids projected, segment id x 2.
        explained: Variance share of the two components.
    """

    points: np.ndarray
    labels: np.ndarray
    centroids: np.ndarray
    explained: tuple[float, float]


def segment_projection(
    bundle: SegmenterBundle,
    frame: pd.DataFrame,
    sample_size: int = PCA_SAMPLE,
    seed: int = 0,
) -> Projection:
    """PCA of the scaled (log1p, standardised, weighted) features of a sample.

    The space is the pipeline minus its KMeans step -- the distances KMeans saw --
    so segments that overlap here overlap for the model too (up to the two
    components shown).
    """
    data = frame[list(bundle.features)].to_numpy(dtype=np.float64)
    data = data[np.isfinite(data).all(axis=1)]
    if len(data) > sample_size:
        rows = np.random.default_rng(seed).choice(len(data), sample_size, replace=False)
        data = data[np.sort(rows)]
    if len(data) < 3:
        raise ValueError("frame: too few complete rows to project")
    scaled = bundle.pipeline[:-1].transform(data)
    labels = bundle.pipeline[-1].predict(scaled).astype(int)
    pca = PCA(n_components=2, random_state=seed).fit(scaled)
    centroids = pca.transform(bundle.pipeline[-1].cluster_centers_)
    ratio = pca.explained_variance_ratio_
    return Projection(
        points=pca.transform(scaled),
        labels=labels,
        centroids=centroids,
        explained=(float(ratio[0]), float(ratio[1])),
    )


@dataclass(frozen=True)
class ProfileGaps:
    """Each segment's feature means against the population median.

    Attributes:
        features: Column order.
        median: Population median of each feature.
        gap: Segments x features: (log1p(segment mean) - log1p(median)) divided by
            the population's standard deviation of log1p(feature).
    """

    features: list[str]
    median: np.ndarray
    gap: np.ndarray


def profile_gaps(
    segments: Sequence[Segment],
    features: Sequence[str],
    frame: pd.DataFrame | None = None,
    medians: dict[str, float] | None = None,
) -> ProfileGaps:
    """Standardised gaps of segment profiles to the population median.

    The log1p scale is the one the segmenter clusters on: a ratio would blow up
    for the many count features whose median is 0, and a raw difference would let
    revenue dwarf counts. Without ``frame`` the population spread is unknown, so
    gaps are plain log1p differences (medians from ``medians``).
    """
    features = list(features)
    if frame is not None and len(frame):
        values = frame[features].to_numpy(dtype=np.float64)
        median = np.nanmedian(values, axis=0)
        spread = np.nanstd(np.log1p(np.maximum(values, 0.0)), axis=0)
    else:
        median = np.array([(medians or {}).get(n, 0.0) for n in features])
        spread = np.ones(len(features))
    spread = np.where(spread > 1e-12, spread, 1.0)
    means = np.array([[s.profile.get(n, np.nan) for n in features] for s in segments])
    difference = np.log1p(np.maximum(means, 0.0)) - np.log1p(np.maximum(median, 0.0))
    gap = difference / spread
    return ProfileGaps(
        features=features, median=median, gap=gap.reshape(-1, len(features))
    )


def thin(
    x: np.ndarray, y: np.ndarray, max_points: int = CURVE_POINTS
) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` vertices of a curve, evenly spaced by index.

    Curve vertices are thresholds, so even index spacing means even spacing in
    rows admitted: dense where the data is, and both ends are kept.
    """
    if len(x) <= max_points:
        return x, y
    keep = np.unique(np.linspace(0, len(x) - 1, max_points).round().astype(int))
    return x[keep], y[keep]


# --------------------------------------------------------------------------------
# SVG drawing
# --------------------------------------------------------------------------------


def _f(value: float) -> str:
    # One decimal of a pixel is invisible; fewer characters keep the file small.
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


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


# --------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------


def plot_k_selection(
    rows: Sequence[tuple[int, float, float]], chosen: int | None
) -> str:
    """Silhouette (higher is better) and Davies-Bouldin (lower) by k, side by side."""
    ks = np.array([r[0] for r in rows], dtype=np.float64)
    xlim = (float(ks.min()) - 0.5, float(ks.max()) + 0.5)
    xticks = [(float(k), str(int(k))) for k in ks]
    body: list[str] = []
    for i, (col, name, color) in enumerate(
        (
            (1, "Silhouette (higher is better)", "#4e79a7"),
            (2, "Davies-Bouldin (lower is better)", "#e15759"),
        )
    ):
        values = np.array([r[col] for r in rows], dtype=np.float64)
        panel = _Panel(
            (60 + i * 330, 30, 250, 200),
            xlim,
            _nice_range(values),
            title=name,
            xlabel="k (segments)",
            xticks=xticks,
        )
        body.append(panel.frame())
        if chosen is not None:
            x = _f(float(panel.px(chosen)))
            body.append(
                f'<line x1="{x}" x2="{x}" y1="{_f(panel.top)}" '
                f'y2="{_f(panel.top + panel.height)}" stroke="#333" '
                'stroke-dasharray="4 3"/>'
                f'<text x="{x}" y="{_f(panel.top + 12)}" dx="4" class="tick">'
                f"chosen k={chosen}</text>"
            )
        body.append(panel.line(ks, values, color, markers=True))
        if chosen is not None and chosen in ks:
            at = values[ks == chosen]
            body.append(panel.dots([chosen], at, "#222", radius=5.5, opacity=1.0))
    return _svg("k_selection", 640, 275, body, "Silhouette and Davies-Bouldin by k")


def plot_projection(projection: Projection, segments: Sequence[Segment]) -> str:
    """Users in the first two principal components, coloured by segment."""
    names = {s.id: s.name for s in segments}
    ids = sorted(set(projection.labels.tolist()) | set(names))
    colors = {seg: _PALETTE[i % len(_PALETTE)] for i, seg in enumerate(ids)}
    pts = projection.points
    labels = [f"{seg}: {names.get(seg, f'segment {seg}')}" for seg in ids]
    legend_w = _legend_width(labels)
    panel = _Panel(
        (60, 20, 460, 400),
        _nice_range(np.r_[pts[:, 0], projection.centroids[:, 0]]),
        _nice_range(np.r_[pts[:, 1], projection.centroids[:, 1]]),
        xlabel=f"PC1 ({projection.explained[0]:.0%} of variance)",
        ylabel=f"PC2 ({projection.explained[1]:.0%} of variance)",
    )
    body = [panel.frame()]
    for seg in ids:
        mine = projection.labels == seg
        body.append(panel.dots(pts[mine, 0], pts[mine, 1], colors[seg], opacity=0.45))
    for seg in ids:
        if seg < len(projection.centroids):
            cx = float(panel.px(projection.centroids[seg, 0]))
            cy = float(panel.py(projection.centroids[seg, 1]))
            body.append(
                f'<circle cx="{_f(cx)}" cy="{_f(cy)}" r="7" fill="{colors[seg]}" '
                f'stroke="#000" stroke-width="1.5"><title>centroid of '
                f"{_esc(names.get(seg, seg))}</title></circle>"
            )
    body.append(
        _legend(
            540,
            20,
            [(lab, colors[s]) for lab, s in zip(labels, ids, strict=True)],
            dots=True,
        )
    )
    return _svg(
        "segments_pca",
        550 + legend_w,
        470,
        body,
        "Segments in 2-D PCA of the scaled space",
    )


def plot_profiles(segments: Sequence[Segment], gaps: ProfileGaps) -> str:
    """Heatmap: segment means, coloured by standardised gap to the median."""
    features = gaps.features
    rows = [f"{s.id}: {s.name}" for s in segments] + ["Population median"]
    left = 14 + 6.3 * max(len(r) for r in rows)
    cell_w, cell_h, top = 62.0, 26.0, 120.0
    # Column labels slant up and to the right, past the last column.
    overhang = 0.77 * 6.3 * max((len(n) for n in features), default=0)
    width = left + cell_w * len(features) + max(20.0, overhang - cell_w / 2)
    height = top + cell_h * len(rows) + 50
    body: list[str] = []
    for j, name in enumerate(features):
        x = left + cell_w * (j + 0.5)
        body.append(
            f'<text transform="translate({_f(x)},{_f(top - 6)}) rotate(-40)" '
            f'class="tick">{_esc(name)}</text>'
        )
    for i, row in enumerate(rows):
        y = top + cell_h * i
        body.append(
            f'<text x="{_f(left - 8)}" y="{_f(y + cell_h / 2)}" dy=".32em" '
            f'text-anchor="end" class="tick">{_esc(row)}</text>'
        )
        for j, name in enumerate(features):
            x = left + cell_w * j
            if i < len(segments):
                value = segments[i].profile.get(name, float("nan"))
                gap = float(gaps.gap[i, j])
                fill = _diverging(gap)
                tip = f"{segments[i].name}, {name}: mean {value:.4g}, gap {gap:+.2f} sd"
            else:
                value, fill = float(gaps.median[j]), "#f4f4f4"
                tip = f"population median of {name}: {value:.4g}"
            body.append(
                f'<rect x="{_f(x)}" y="{_f(y)}" width="{_f(cell_w - 2)}" '
                f'height="{_f(cell_h - 2)}" fill="{fill}"><title>{_esc(tip)}</title>'
                f'</rect><text x="{_f(x + cell_w / 2 - 1)}" y="{_f(y + cell_h / 2)}" '
                f'dy=".32em" text-anchor="middle" class="cell">{_compact(value)}</text>'
            )
    # Colour key.
    key_y = top + cell_h * len(rows) + 16
    for k, value in enumerate(np.linspace(-2, 2, 9)):
        body.append(
            f'<rect x="{_f(left + 22 * k)}" y="{_f(key_y)}" width="22" height="10" '
            f'fill="{_diverging(float(value))}"/>'
        )
    body.append(
        f'<text x="{_f(left + 22 * 9 + 8)}" y="{_f(key_y + 5)}" dy=".32em" '
        'class="tick">gap to the median on the log1p scale, in population sd '
        "(-2 ... +2)</text>"
    )
    return _svg("segment_profiles", width, height, body, "Segment profiles")


def plot_roc(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], aucs: dict[str, float]
) -> str:
    """ROC curves of every contender, with the chance diagonal."""
    panel = _Panel(
        (60, 20, 340, 340),
        (0.0, 1.0),
        (0.0, 1.0),
        xlabel="False positive rate",
        ylabel="True positive rate",
    )
    body = [panel.frame(), panel.line([0, 1], [0, 1], "#999", width=1, dashed=True)]
    entries = []
    for key, (fpr, tpr) in curves.items():
        label, color = _CONTENDERS[key][1], _CONTENDERS[key][2]
        body.append(panel.line(*thin(fpr, tpr), color, tooltip=label))
        entries.append((f"{label} (AUC {aucs.get(key, float('nan')):.3f})", color))
    # Below the axes: inside, it would hide some curve for some model.
    body.append(_legend(panel.left, 400, entries))
    return _svg("roc", 420, 412 + 16 * len(entries), body, "ROC curves")


def plot_pr(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    aps: dict[str, float],
    base_rate: float,
) -> str:
    """Precision-recall curves of every contender, with the base-rate line."""
    panel = _Panel(
        (60, 20, 340, 340), (0.0, 1.0), (0.0, 1.0), xlabel="Recall", ylabel="Precision"
    )
    body = [
        panel.frame(),
        panel.line(
            [0, 1],
            [base_rate, base_rate],
            "#999",
            width=1,
            dashed=True,
            tooltip=f"base rate {base_rate:.3f}",
        ),
    ]
    entries = []
    for key, (precision, recall) in curves.items():
        label, color = _CONTENDERS[key][1], _CONTENDERS[key][2]
        rx, py = thin(recall, precision)
        body.append(panel.line(rx, py, color, tooltip=label))
        entries.append((f"{label} (AP {aps.get(key, float('nan')):.3f})", color))
    entries.append((f"Base rate {base_rate:.3f}", "#999"))
    body.append(
        _legend(panel.left, 400, entries, dashed=[False] * (len(entries) - 1) + [True])
    )
    return _svg("pr", 420, 412 + 16 * len(entries), body, "Precision-recall curves")


def plot_calibration(bins: dict[str, CalibrationBins], n_bins: int = 10) -> str:
    """Reliability diagram over a histogram of predictions per bin (log scale)."""
    top = _Panel(
        (60, 20, 360, 300),
        (0.0, 1.0),
        (0.0, 1.0),
        ylabel="Observed purchase rate",
        # The histogram below carries the x labels.
        xticks=[(v / 5, "") for v in range(6)],
    )
    body = [top.frame(), top.line([0, 1], [0, 1], "#999", width=1, dashed=True)]
    entries: list[tuple[str, str]] = []
    for key, b in bins.items():
        label, color = _CONTENDERS[key][1], _CONTENDERS[key][2]
        body.append(
            top.line(b.predicted, b.observed, color, markers=True, tooltip=label)
        )
        entries.append((label, color))
    entries.append(("Perfectly calibrated", "#999"))
    body.append(
        _legend(
            top.left + 8,
            top.top + 8,
            entries,
            dashed=[False] * (len(entries) - 1) + [True],
        )
    )
    # Predictions crowd the low bins (purchases are rare), so counts need a log
    # axis to show the sparse high bins at all.
    most = max((int(b.count.max()) for b in bins.values() if len(b.count)), default=1)
    decades = max(1, math.ceil(math.log10(most + 1)))
    bottom = _Panel(
        (60, 332, 360, 90),
        (0.0, 1.0),
        (0.0, float(decades)),
        xlabel="Mean predicted probability (10 uniform bins)",
        ylabel="Rows",
        yticks=[
            (float(d), f"{10**d:,}")
            for d in range(0, decades + 1, max(1, math.ceil(decades / 3)))
        ],
    )
    body.append(bottom.frame())
    width = 1.0 / n_bins / max(1, len(bins))
    for i, (key, b) in enumerate(bins.items()):
        color = _CONTENDERS[key][2]
        for idx, count in zip(b.bin, b.count, strict=True):
            x0 = idx / n_bins + i * width
            body.append(
                bottom.rect(
                    x0,
                    x0 + width * 0.9,
                    0.0,
                    math.log10(count + 1),
                    color,
                    f"{_CONTENDERS[key][1]}: {count:,} rows in bin {idx + 1}",
                )
            )
    return _svg("calibration", 440, 467, body, "Calibration curve")


def plot_lift(tables: dict[str, LiftTable]) -> str:
    """Lift per score decile for every contender, with the random-targeting line."""
    n_groups = len(next(iter(tables.values())).lift)
    most = max(float(np.nanmax(t.lift)) for t in tables.values())
    panel = _Panel(
        (60, 20, 520, 280),
        (0.5, n_groups + 0.5),
        _nice_range(np.array([most]), include=[0.0]),
        xlabel="Score decile (1 = highest scores)",
        ylabel="Lift (purchase rate / overall rate)",
        xticks=[(float(d), str(d)) for d in range(1, n_groups + 1)],
    )
    body = [panel.frame()]
    width = 0.8 / len(tables)
    entries = []
    for i, (key, table) in enumerate(tables.items()):
        label, color = _CONTENDERS[key][1], _CONTENDERS[key][2]
        entries.append((label, color))
        for d, (lift, rate) in enumerate(zip(table.lift, table.rate, strict=True), 1):
            x0 = d - 0.4 + i * width
            body.append(
                panel.rect(
                    x0,
                    x0 + width * 0.92,
                    0.0,
                    float(lift),
                    color,
                    f"{label}, decile {d}: lift {lift:.2f}, rate {rate:.3f}",
                )
            )
    body.append(panel.line([0.5, n_groups + 0.5], [1, 1], "#333", width=1, dashed=True))
    body.append(
        _legend(
            panel.left + panel.width - _legend_width([e[0] for e in entries]) - 8,
            panel.top + 8,
            entries,
        )
    )
    return _svg("lift", 600, 345, body, "Lift chart by decile")


def plot_shap_bars(summary: ShapSummary) -> str:
    """Mean |SHAP| per feature, most important first."""
    n = len(summary.features)
    left = 14 + 6.3 * max(len(f) for f in summary.features)
    panel = _Panel(
        (left, 10, 360, 18.0 * n),
        _nice_range(summary.mean_abs, include=[0.0]),
        (n, 0.0),
        xlabel="Mean |SHAP value| (log-odds)",
        yticks=[],
    )
    body = [panel.frame()]
    for i, (name, value) in enumerate(
        zip(summary.features, summary.mean_abs, strict=True)
    ):
        body.append(
            panel.rect(
                0.0, float(value), i + 0.15, i + 0.85, "#4e79a7", f"{name}: {value:.4f}"
            )
        )
        body.append(
            f'<text x="{_f(left - 6)}" y="{_f(float(panel.py(i + 0.5)))}" dy=".32em" '
            f'text-anchor="end" class="tick">{_esc(name)}</text>'
        )
    return _svg("shap_bar", left + 380, 18.0 * n + 55, body, "Mean absolute SHAP value")


def plot_shap_dots(
    summary: ShapSummary,
    n_features: int = SHAP_DOT_FEATURES,
    dots: int = SHAP_DOTS,
    seed: int = 0,
) -> str:
    """Beeswarm-like dots: each row's SHAP value, coloured by the feature's value.

    True beeswarms stack dots without overlap, which is quadratic; jittering each
    dot vertically in proportion to the local density of SHAP values gives the
    same silhouette for a fraction of the work.
    """
    rng = np.random.default_rng(seed)
    k = min(n_features, len(summary.features))
    rows = np.arange(len(summary.values))
    if len(rows) > dots:
        rows = np.sort(rng.choice(len(rows), dots, replace=False))
    values = summary.values[rows, :k]
    data = summary.data[rows, :k]
    names = summary.features[:k]
    left = 14 + 6.3 * max(len(f) for f in names)
    panel = _Panel(
        (left, 10, 380, 26.0 * k),
        _nice_range(values, include=[0.0]),
        (k, 0.0),
        xlabel="SHAP value (log-odds impact on the purchase margin)",
        yticks=[],
    )
    body = [panel.frame()]
    zero = _f(float(panel.px(0.0)))
    body.append(
        f'<line x1="{zero}" x2="{zero}" y1="{_f(panel.top)}" '
        f'y2="{_f(panel.top + panel.height)}" stroke="#666"/>'
    )
    levels = 9
    for j, name in enumerate(names):
        shap_j, data_j = values[:, j], data[:, j]
        counts, edges = np.histogram(shap_j, bins=30)
        density = counts[
            np.clip(np.searchsorted(edges, shap_j, side="right") - 1, 0, 29)
        ]
        spread = 0.42 * density / max(1, counts.max())
        y = j + 0.5 + rng.uniform(-1.0, 1.0, len(shap_j)) * spread
        # Colour by the value's rank among the sample, not the raw value: heavy
        # tails would otherwise paint everything "low".
        known = np.isfinite(data_j)
        rank = np.full(len(data_j), np.nan)
        if known.any():
            # Average ranks: tied values (many zero counts) share one colour.
            order = rankdata(data_j[known]) - 1.0
            rank[known] = order / max(1, known.sum() - 1)
        level = np.where(np.isfinite(rank), np.round(rank * (levels - 1)), -1)
        for lv in range(-1, levels):
            mine = level == lv
            if mine.any():
                color = (
                    "#aaaaaa"
                    if lv < 0
                    else _mix("#008bfb", "#ff0052", lv / (levels - 1))
                )
                body.append(
                    panel.dots(shap_j[mine], y[mine], color, radius=2.2, opacity=0.75)
                )
        body.append(
            f'<text x="{_f(left - 6)}" y="{_f(float(panel.py(j + 0.5)))}" dy=".32em" '
            f'text-anchor="end" class="tick">{_esc(name)}</text>'
        )
    key_x, key_y = panel.left + panel.width + 14, panel.top
    for lv in range(levels):
        body.append(
            f'<rect x="{_f(key_x)}" y="{_f(key_y + 12 * (levels - 1 - lv))}" '
            f'width="10" height="12" '
            f'fill="{_mix("#008bfb", "#ff0052", lv / (levels - 1))}"/>'
        )
    body.append(
        f'<text x="{_f(key_x + 14)}" y="{_f(key_y + 6)}" dy=".32em" '
        'class="tick">high</text>'
        f'<text x="{_f(key_x + 14)}" y="{_f(key_y + 12 * levels - 6)}" dy=".32em" '
        'class="tick">low</text>'
        f'<text x="{_f(key_x)}" y="{_f(key_y + 12 * levels + 14)}" class="tick">'
        "feature value</text>"
    )
    return _svg("shap_dots", key_x + 90, 26.0 * k + 55, body, "SHAP values per row")


# --------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;
margin:0;background:#fafafa}
main{max-width:1200px;margin:0 auto;padding:16px 28px 40px;background:#fff}
h1{margin:8px 0 4px}h2{margin-top:36px;border-bottom:2px solid #ddd;padding-bottom:4px}
h3{margin:24px 0 6px}
table{border-collapse:collapse;margin:8px 0}
th,td{border:1px solid #ddd;padding:4px 10px;text-align:left;vertical-align:top}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f3f3f3}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px;margin:8px 0}
dt{color:#666}dd{margin:0}
.banner{padding:12px 16px;border-radius:4px;margin:10px 0;font-weight:600}
.banner.fail{background:#c62828;color:#fff;font-size:17px}
.banner.ok{background:#e8f5e9;color:#1b5e20}
.row{display:flex;flex-wrap:wrap;gap:20px 36px;align-items:flex-start}
figure{margin:8px 0}figcaption{color:#555;font-size:13px;max-width:640px}
.note{color:#777;font-style:italic}
svg.plot{max-width:100%;height:auto;overflow:visible}
svg text{font-family:system-ui,sans-serif;fill:#222}
svg .tick{font-size:11px}svg .label{font-size:12px}
svg .title{font-size:13px;font-weight:600}svg .cell{font-size:10.5px}
svg .grid{stroke:#eee}svg .axes{fill:none;stroke:#888}
svg .legend{fill:#fff;fill-opacity:.88;stroke:#ccc}
details{margin-top:12px}
"""


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return _MISSING
    if isinstance(value, str):
        return value
    number = float(value)
    if not math.isfinite(number):
        return _MISSING
    if number.is_integer():
        return f"{int(number):,}"
    return f"{number:.{digits}f}"


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _table(
    head: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool] = ()
) -> str:
    """An HTML table; cells are pre-escaped HTML."""
    cls = [
        ' class="num"' if i < len(numeric) and numeric[i] else ""
        for i in range(len(head))
    ]
    out = ["<table><thead><tr>"]
    out += [f"<th{cls[i]}>{_esc(h)}</th>" for i, h in enumerate(head)]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append(
            "<tr>"
            + "".join(f"<td{cls[i]}>{c}</td>" for i, c in enumerate(row))
            + "</tr>"
        )
    out.append("</tbody></table>")
    return "".join(out)


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{_esc(caption)}</figcaption></figure>"


def _run_section(result: TrainResult) -> str:
    seg, prop = result.segmenter, result.propensity
    start, end = result.window
    outcomes = getattr(result.backfill, "outcomes", None) or {}
    version = seg.metrics.get("code_version") or prop.metrics.get("code_version")
    frame = result.segmentation_frame
    # Every user has a final state; the segmentation frame is the fallback for
    # results that carry no states.
    users = len(result.states) or (0 if frame is None else len(frame))
    facts = [
        (
            "Training window",
            f"{_iso(start)} → {_iso(end)} ({(end - start) / 86_400:.1f} days)",
        ),
        ("Events", f"{sum(outcomes.values()):,}" if outcomes else _MISSING),
        (
            "Event outcomes",
            ", ".join(f"{k} {v:,}" for k, v in outcomes.items()) or _MISSING,
        ),
        ("Users", f"{users:,}" if users else _MISSING),
        ("Snapshots", f"{len(result.snapshots):,}"),
        ("Segmenter rows", _num(seg.metrics.get("n_rows"))),
        (
            "Propensity rows",
            " / ".join(
                f"{name} {_num(prop.metrics.get(f'n_{name}'))}"
                for name in ("train", "tune", "holdout")
            ),
        ),
        ("Segmenter", seg.tag or "(not stored)"),
        ("Propensity model", prop.tag or "(not stored)"),
        ("Code version", str(version) if version else registry.code_version()),
    ]
    out = ['<section id="run"><h2>Training run</h2><dl>']
    out += [f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in facts]
    out.append("</dl><h3>Promotion decisions</h3>")
    if result.decisions:
        out.append(
            _table(
                ["Model", "Challenger", "Champion", "Promoted", "Reason"],
                [
                    [
                        _esc(d.model),
                        _esc(d.challenger),
                        _esc(d.champion or _MISSING),
                        "<strong>yes</strong>" if d.promoted else "no",
                        _esc(d.reason),
                    ]
                    for d in result.decisions
                ],
            )
        )
    else:
        out.append('<p class="note">No promotion was attempted in this run.</p>')
    if result.timings:
        out.append("<h3>Timings</h3>")
        out.append(
            _table(
                ["Stage", "Seconds"],
                [[_esc(k), f"{v:.2f}"] for k, v in result.timings.items()]
                + [["<strong>total</strong>", f"{sum(result.timings.values()):.2f}"]],
                numeric=[False, True],
            )
        )
    out.append("</section>")
    return "".join(out)


# Rows of the metrics table: (label, metric suffix, higher is better).
_METRIC_ROWS = (
    ("ROC-AUC", "roc_auc", True),
    ("PR-AUC (average precision)", "pr_auc", True),
    ("Brier score", "brier", False),
    ("Top-decile lift", "lift_top_decile", True),
)


def _metrics_section(metrics: dict[str, float]) -> str:
    out = ['<section id="metrics"><h2>Propensity metrics on the holdout</h2>']
    beats = metrics.get("beats_baselines")
    if beats is not None and float(beats) == 0.0:
        out.append(
            '<div class="banner fail" role="alert">⚠ The propensity model does NOT '
            "beat its baselines on the holdout: its ROC-AUC "
            f"{_num(metrics.get('roc_auc'))} is not above both the recency-frequency "
            f"baseline ({_num(metrics.get('baseline_roc_auc'))}) and logistic "
            f"regression ({_num(metrics.get('logistic_roc_auc'))}).</div>"
        )
    elif beats is not None:
        out.append(
            '<div class="banner ok">The model beats both baselines on holdout '
            "ROC-AUC.</div>"
        )
    rows = []
    for label, suffix, higher in _METRIC_ROWS:
        values = [metrics.get(prefix + suffix) for prefix, _, _ in _CONTENDERS.values()]
        known = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        best = (max if higher else min)(known) if known else None
        cells = [_esc(label) + (" ↑" if higher else " ↓")]
        for v in values:
            text = _num(v)
            is_best = v is not None and best is not None and float(v) == best
            cells.append(f"<strong>{text}</strong>" if is_best else text)
        rows.append(cells)
    head = ["Metric", *(c[1] for c in _CONTENDERS.values())]
    out.append(_table(head, rows, numeric=[False, True, True, True]))
    out.append(
        '<p class="note">Best value per row in bold. The recency-frequency score is a '
        "rank, not a probability, so it has no Brier score. Holdout base rate: "
        f"{_num(metrics.get('base_rate_valid'))}.</p></section>"
    )
    return "".join(out)


def _segmenter_section(result: TrainResult) -> str:
    seg = result.segmenter
    out = ['<section id="segmenter"><h2>Segmenter</h2>']
    out.append("<h3>Silhouette and Davies-Bouldin by k</h3>")
    rows = k_selection(seg.metrics)
    chosen = int(seg.metrics["k"]) if "k" in seg.metrics else None
    if rows:
        out.append(
            _figure(
                plot_k_selection(rows, chosen),
                "Each candidate k clustered the same users; the best silhouette wins. "
                "Both scores are computed on a sample of at most 5000 users.",
            )
        )
    else:
        out.append('<p class="note">The segmenter recorded no per-k scores.</p>')
    facts = [
        f"k = {_num(seg.metrics.get('k'))}",
        f"silhouette {_num(seg.metrics.get('silhouette'))}",
        f"Davies-Bouldin {_num(seg.metrics.get('davies_bouldin'))}",
    ]
    if "ari_vs_personas" in seg.metrics:
        facts.append(
            f"adjusted Rand index vs. simulated personas "
            f"{_num(seg.metrics['ari_vs_personas'])}"
        )
    out.append(f"<p>{_esc('; '.join(facts))}.</p>")

    out.append("<h3>Segments in 2-D PCA</h3>")
    frame = result.segmentation_frame
    if frame is not None and len(frame):
        projection = segment_projection(seg, frame)
        out.append(
            _figure(
                plot_projection(projection, seg.segments),
                f"{len(projection.points):,} users (a random sample) in the first two "
                "principal components of the space KMeans clusters in (log1p, "
                "standardised, weighted); large dots are the centroids.",
            )
        )
    else:
        out.append('<p class="note">No segmentation frame in this result.</p>')

    out.append("<h3>Segment profiles</h3>")
    total = sum(s.size for s in seg.segments) or 1
    out.append(
        _table(
            ["Id", "Segment", "Users", "Share", "Description"],
            [
                [
                    str(s.id),
                    f"<strong>{_esc(s.name)}</strong>",
                    f"{s.size:,}",
                    f"{s.size / total:.1%}",
                    _esc(s.description),
                ]
                for s in seg.segments
            ],
            numeric=[True, False, True, True, False],
        )
    )
    if seg.segments:
        gaps = profile_gaps(seg.segments, seg.features, frame, seg.defaults)
        out.append(
            _figure(
                plot_profiles(seg.segments, gaps),
                "Cells show each segment's mean; colour is its gap to the population "
                "median on the log1p scale in population standard deviations (red "
                "above, blue below).",
            )
        )
    out.append("</section>")
    return "".join(out)


def _propensity_section(result: TrainResult, shap_sample: int) -> str:
    prop = result.propensity
    evaluation = prop.evaluation
    out = ['<section id="propensity"><h2>Propensity model</h2>']
    labels = None if evaluation is None else np.asarray(evaluation.labels)
    if labels is None or len(set(labels.tolist())) < 2:
        out.append(
            '<p class="note">No holdout evaluation with both classes in this result; '
            "curves are not drawn.</p></section>"
        )
        return "".join(out)
    scores = {
        MODEL: np.asarray(evaluation.model, dtype=np.float64),
        RECENCY_FREQUENCY: np.asarray(evaluation.recency_frequency, dtype=np.float64),
        LOGISTIC: np.asarray(evaluation.logistic, dtype=np.float64),
    }
    m = prop.metrics
    auc = {k: m.get(_CONTENDERS[k][0] + "roc_auc", float("nan")) for k in scores}
    ap = {k: m.get(_CONTENDERS[k][0] + "pr_auc", float("nan")) for k in scores}
    roc = {k: roc_points(labels, s) for k, s in scores.items()}
    pr = {k: pr_points(labels, s) for k, s in scores.items()}
    out.append('<h3>ROC and precision-recall curves</h3><div class="row">')
    out.append(
        _figure(plot_roc(roc, auc), "ROC curves on the holdout users; dashed: chance.")
    )
    out.append(
        _figure(
            plot_pr(pr, ap, float(labels.mean())),
            "Precision-recall curves; dashed: the holdout purchase rate (what random "
            "targeting achieves).",
        )
    )
    out.append("</div>")

    out.append("<h3>Calibration curve</h3>")
    bins = {k: calibration_bins(labels, scores[k]) for k in (MODEL, LOGISTIC)}
    out.append(
        _figure(
            plot_calibration(bins),
            "Reliability diagram: mean predicted probability vs. observed purchase "
            "rate in 10 uniform bins (the model after Platt scaling, and logistic "
            "regression); below, rows per bin on a log scale. The recency-frequency "
            "score is not a probability and is left out.",
        )
    )

    out.append("<h3>Lift chart</h3>")
    if len(labels) >= 10:
        lifts = {k: lift_by_decile(labels, s) for k, s in scores.items()}
        out.append(
            _figure(
                plot_lift(lifts),
                "Purchase rate in each score decile over the overall rate; dashed: "
                "random targeting (lift 1).",
            )
        )
        model_lift = lifts[MODEL]
        out.append(
            _table(
                ["Decile", "Rows", "Purchase rate", "Lift", "Cumulative lift"],
                [
                    [
                        str(d + 1),
                        f"{model_lift.size[d]:,}",
                        f"{model_lift.rate[d]:.4f}",
                        f"{model_lift.lift[d]:.2f}",
                        f"{model_lift.cumulative_lift[d]:.2f}",
                    ]
                    for d in range(len(model_lift.size))
                ],
                numeric=[True] * 5,
            )
        )

    out.append("<h3>SHAP summary</h3>")
    frame = evaluation.frame
    if frame is not None and len(frame) and set(prop.features) <= set(frame.columns):
        summary = shap_summary(prop.booster, frame, prop.features, shap_sample)
        n_rows = len(summary.values)
        out.append('<div class="row">')
        out.append(
            _figure(
                plot_shap_bars(summary),
                f"Mean |SHAP value| per feature over {n_rows:,} holdout rows (exact "
                "TreeSHAP on the raw margin, before calibration).",
            )
        )
        out.append(
            _figure(
                plot_shap_dots(summary),
                f"One dot per row ({min(n_rows, SHAP_DOTS):,} rows) for the "
                f"{min(SHAP_DOT_FEATURES, len(summary.features))} most important "
                "features: position is the SHAP value, colour the feature's value "
                "(rank within the sample); grey = missing.",
            )
        )
        out.append("</div>")
    else:
        out.append('<p class="note">No holdout features to explain.</p>')
    out.append("</section>")
    return "".join(out)


def _all_metrics_section(result: TrainResult) -> str:
    out = ['<section id="all-metrics"><h2>All metrics</h2><div class="row">']
    for name, metrics in (
        ("Segmenter", result.segmenter.metrics),
        ("Propensity", result.propensity.metrics),
    ):
        out.append(
            "<div>"
            + f"<h3>{_esc(name)}</h3>"
            + _table(
                ["Metric", "Value"],
                [[_esc(k), _esc(_num(v))] for k, v in sorted(metrics.items())],
                numeric=[False, True],
            )
            + "</div>"
        )
    out.append("</div></section>")
    return "".join(out)


def render_report(
    result: TrainResult, *, title: str = DEFAULT_TITLE, shap_sample: int = SHAP_SAMPLE
) -> str:
    """The report as one HTML document (no external resources).

    Args:
        result: A training run's output.
        title: Page title and heading.
        shap_sample: Holdout rows explained with TreeSHAP.
    """
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    body = [
        f"<h1>{_esc(title)}</h1>",
        f'<p class="note">Generated {generated}.</p>',
        _run_section(result),
        _metrics_section(result.propensity.metrics),
        _segmenter_section(result),
        _propensity_section(result, shap_sample),
        _all_metrics_section(result),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )


def write_report(
    result: TrainResult,
    path: Path,
    *,
    title: str = DEFAULT_TITLE,
    shap_sample: int = SHAP_SAMPLE,
) -> Path:
    """Write the training report for ``result`` to ``path`` (one HTML file).

    The file is written next to its destination and renamed into place, so a
    reader never sees half a report.

    Args:
        result: A training run's output (:func:`training.pipeline.train`).
        path: Destination; missing parent directories are created.
        title: Page title and heading.
        shap_sample: Holdout rows explained with TreeSHAP (the report's one
            costly step: ~1 s for 2000 rows of a 250-tree booster).

    Returns:
        ``path``.
    """
    clock = time.perf_counter()
    document = render_report(result, title=title, shap_sample=shap_sample)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        # mkstemp makes the file private; a report is meant to be shared.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(document)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info(
        "report: wrote %s (%.0f KB) in %.2fs",
        path,
        len(document.encode()) / 1024,
        time.perf_counter() - clock,
    )
    return path
