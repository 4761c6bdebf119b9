"""The propensity parts of the training report: holdout metrics and the plots.

The metrics section compares the model with its baselines (and says loudly when
it loses); the propensity section places the ROC, precision-recall,
calibration, lift and SHAP plots with the lift table.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from training.promotion import baseline_gate
from training.report.markup import _esc, _figure, _num, _table
from training.report.measures import (
    calibration_bins,
    lift_by_decile,
    pr_points,
    roc_points,
    shap_summary,
)
from training.report.propensity_plots import (
    _CONTENDERS,
    LOGISTIC,
    MODEL,
    RECENCY_FREQUENCY,
    SHAP_DOT_FEATURES,
    SHAP_DOTS,
    plot_calibration,
    plot_lift,
    plot_pr,
    plot_roc,
    plot_shap_bars,
    plot_shap_dots,
)

if TYPE_CHECKING:
    from training.pipeline import TrainResult


# Rows of the metrics table: (label, metric suffix, higher is better).
_METRIC_ROWS = (
    ("ROC-AUC", "roc_auc", True),
    ("PR-AUC (average precision)", "pr_auc", True),
    ("Brier score", "brier", False),
    ("Top-decile lift", "lift_top_decile", True),
)


def metrics_section(metrics: dict[str, float]) -> str:
    """The holdout metrics of the model and its baselines, with the verdict banner."""
    out = ['<section id="metrics"><h2>Propensity metrics on the holdout</h2>']
    beats = metrics.get("beats_baselines")
    gate = baseline_gate(metrics).summary
    if beats is not None and float(beats) == 0.0:
        out.append(
            '<div class="banner fail" role="alert">⚠ The propensity model does NOT '
            "beat its baselines on the holdout, so it is not promoted unless forced "
            f"(baseline gate {_esc(gate)}).</div>"
        )
    elif beats is not None:
        out.append(
            '<div class="banner ok">The model beats every baseline on holdout '
            f"ROC-AUC (baseline gate {_esc(gate)}).</div>"
        )
    rows = []
    columns = [(prefix, title) for prefix, title, _ in _CONTENDERS.values()]
    if "bgnbd_roc_auc" in metrics:
        columns.append(("bgnbd_", "BG/NBD"))
    for label, suffix, higher in _METRIC_ROWS:
        values = [metrics.get(prefix + suffix) for prefix, _ in columns]
        known = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        best = (max if higher else min)(known) if known else None
        cells = [_esc(label) + (" ↑" if higher else " ↓")]
        for v in values:
            text = _num(v)
            is_best = v is not None and best is not None and float(v) == best
            cells.append(f"<strong>{text}</strong>" if is_best else text)
        rows.append(cells)
    head = ["Metric", *(title for _, title in columns)]
    out.append(_table(head, rows, numeric=[False] + [True] * len(columns)))
    out.append(
        '<p class="note">Best value per row in bold. The recency-frequency score is a '
        "rank, not a probability, so it has no Brier score. Holdout base rate: "
        f"{_num(metrics.get('base_rate_valid'))}.{_holdout_note(metrics)}</p></section>"
    )
    return "".join(out)


def _holdout_note(metrics: dict[str, float]) -> str:
    """Who the holdout is: the cut-off, its rows, and how tuning was done."""
    at = metrics.get("holdout_cutoff_ts")
    if at is None or not math.isfinite(float(at)):
        return ""
    day = datetime.fromtimestamp(float(at), UTC).strftime("%Y-%m-%d %H:%M UTC")
    tuned = (
        "half of them by user hash (too little history for a tuning cut-off)"
        if metrics.get("tuned_by_users")
        else "everyone one label horizon earlier"
    )
    return (
        f" Holdout: {int(metrics.get('n_holdout', 0)):,} rows from {_esc(day)}; "
        f"tuned on {tuned}; trained on {int(metrics.get('n_train', 0)):,} earlier rows."
    )


def propensity_section(result: TrainResult, shap_sample: int) -> str:
    """The propensity section: curves, calibration, lift and SHAP on the holdout.

    Args:
        result: A training run's output.
        shap_sample: Holdout rows explained with TreeSHAP.
    """
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
