"""The propensity model's plots: ROC, precision-recall, calibration, lift, SHAP.

Each plot draws every contender (the model and its two baselines) in the same
colour, so a reader can follow one model from plot to plot.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

from training.report.markup import _esc
from training.report.measures import (
    CalibrationBins,
    LiftTable,
    ShapSummary,
    thin,
)
from training.report.svg import (
    _f,
    _legend,
    _legend_width,
    _mix,
    _nice_range,
    _Panel,
    _svg,
)

# Points drawn per feature in the SHAP dot plot: beyond these the SVG grows by
# megabytes without showing more.
SHAP_DOTS = 400
# Features shown in the SHAP dot plot (the bar chart shows all of them).
SHAP_DOT_FEATURES = 12

# Contenders in every propensity plot and table: (key prefix in the metrics, label,
# colour).
MODEL, LOGISTIC, RECENCY_FREQUENCY = "model", "logistic", "recency_frequency"
_CONTENDERS: dict[str, tuple[str, str, str]] = {
    MODEL: ("", "LightGBM (calibrated)", "#4e79a7"),
    RECENCY_FREQUENCY: ("baseline_", "Recency-frequency baseline", "#59a14f"),
    LOGISTIC: ("logistic_", "Logistic regression", "#f28e2b"),
}


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
