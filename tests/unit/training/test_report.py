"""The training report: real (tiny) models in, one self-contained HTML file out.

No Feast and no services: the segmenter and the propensity model are fitted
directly on synthetic frames shaped like the training sets, and wrapped in a
``TrainResult`` with minimal values for the fields the report only summarises.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_curve, roc_curve

from core.feature_catalog import PROPENSITY_FEATURES, SEGMENTATION_FEATURES
from training.backfill import BackfillResult
from training.pipeline import TrainResult
from training.promotion import Decision
from training.propensity import fit_propensity, lift_at
from training.report import write_report
from training.report.measures import (
    calibration_bins,
    k_selection,
    lift_by_decile,
    pr_points,
    profile_gaps,
    roc_points,
    shap_summary,
    thin,
)
from training.segmenter import fit_segmenter

START = 1_704_067_200.0  # 2024-01-01 00:00:00 UTC
DAY = 86_400.0
HORIZON_DAYS = 7

# Synthetic shopper types: (share, scale of activity, scale of buying).
_TYPES = ((0.5, 0.3, 0.05), (0.35, 1.5, 0.6), (0.15, 4.0, 3.0))


def segmentation_frame(n_users: int, seed: int = 0) -> pd.DataFrame:
    """One row per user, three well-separated behaviour types, values >= 0."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(len(_TYPES), n_users, p=[t[0] for t in _TYPES])
    activity = np.array([_TYPES[k][1] for k in kinds])
    buying = np.array([_TYPES[k][2] for k in kinds])
    noise = rng.lognormal(0.0, 0.25, (n_users, len(SEGMENTATION_FEATURES)))
    base = {
        "events_7d": 20 * activity,
        "sessions_7d": 3 * activity,
        "view_to_cart_rate_7d": 0.1 + 0.1 * buying / 3,
        "avg_viewed_price_7d": 40 + 10 * buying,
        "orders_90d": 2 * buying,
        "revenue_90d": 120 * buying,
        "avg_order_value_90d": 50 + 5 * buying,
        "purchase_days_90d": 1.8 * buying,
        "sessions_30d": 12 * activity,
        "product_views_30d": 60 * activity,
        "cart_adds_30d": 8 * activity * (0.5 + buying),
        "conversion_rate_30d": 0.05 * buying,
        "hours_since_last_event": 200 / activity,
        "orders_lifetime": 1 + 4 * buying,
        "days_since_last_purchase": 20 / (0.1 + buying),
    }
    values = np.column_stack([base[n] for n in SEGMENTATION_FEATURES]) * noise
    frame = pd.DataFrame(values, columns=list(SEGMENTATION_FEATURES))
    frame.insert(0, "user_id", [f"u{i:05d}" for i in range(n_users)])
    return frame


def propensity_frame(n_users: int, n_days: int = 20, seed: int = 0) -> pd.DataFrame:
    """(user, daily snapshot) rows with a label that depends on the features."""
    rng = np.random.default_rng(seed)
    rows = n_users * n_days
    user = np.repeat(np.arange(n_users), n_days)
    day = np.tile(np.arange(n_days), n_users)
    # A stable per-user appetite plus daily noise: what the features pick up.
    appetite = rng.gamma(1.0, 1.0, n_users)[user]
    features = {
        name: rng.gamma(1.0, 1.0, rows) * (1 + appetite * ((i % 3) == 0))
        for i, name in enumerate(PROPENSITY_FEATURES)
    }
    features["orders_90d"] = rng.poisson(appetite * 2).astype(float)
    features["cart_adds_24h"] = rng.poisson(appetite).astype(float)
    features["days_since_last_purchase"] = rng.exponential(30 / (1 + appetite))
    margin = (
        -2.5
        + 0.5 * features["orders_90d"]
        + 0.6 * features["cart_adds_24h"]
        - 0.02 * features["days_since_last_purchase"]
        # A threshold effect the trees find and a linear model cannot.
        + 1.5 * (features["cart_abandonments_24h"] > 1.5)
    )
    label = (rng.random(rows) < 1 / (1 + np.exp(-margin))).astype(int)
    frame = pd.DataFrame(features)[list(PROPENSITY_FEATURES)]
    frame.insert(0, "label", label)
    frame.insert(
        0, "event_timestamp", pd.to_datetime(START + day * DAY, unit="s", utc=True)
    )
    frame.insert(0, "user_id", [f"u{i:05d}" for i in user])
    return frame


def train_result(n_seg_users: int = 400, n_prop_users: int = 300) -> TrainResult:
    """A TrainResult built from directly fitted models (no Feast, no registry)."""
    segmenter = fit_segmenter(segmentation_frame(n_seg_users), k_range=range(2, 6))
    segmenter.tag = "segscore-segmenter:test"
    propensity = fit_propensity(propensity_frame(n_prop_users), HORIZON_DAYS)
    propensity.tag = "segscore-propensity:test"
    empty = pd.DataFrame({"user_id": [], "event_timestamp": []})
    return TrainResult(
        segmenter=segmenter,
        propensity=propensity,
        states={},
        backfill=BackfillResult(
            stream=empty,
            history=empty,
            states={},
            outcomes={"applied": 12_345, "duplicate": 6, "late": 7},
        ),
        snapshots=[START + d * DAY for d in range(20)],
        window=(START, START + 20 * DAY),
        segmentation_frame=segmentation_frame(n_seg_users),
        decisions=[
            Decision("segmenter", segmenter.tag, None, True, "no champion yet", "sil"),
            Decision(
                "propensity",
                propensity.tag,
                "segscore-propensity:old",
                False,
                "holdout ROC-AUC 0.7 <= champion's 0.8",
                "holdout_roc_auc",
            ),
        ],
        timings={"backfill": 1.5, "segmenter_fit": 0.25},
    )


@pytest.fixture(scope="module")
def result() -> TrainResult:
    return train_result()


@pytest.fixture(scope="module")
def report(result: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("report") / "reports" / "train.html"
    assert write_report(result, path, title="Test <run>") == path
    return path.read_text(encoding="utf-8")


PLOTS = (
    "k_selection",
    "segments_pca",
    "segment_profiles",
    "roc",
    "pr",
    "calibration",
    "lift",
    "shap_bar",
    "shap_dots",
)
HEADINGS = (
    "Training run",
    "Promotion decisions",
    "Propensity metrics on the holdout",
    "Segmenter",
    "Silhouette and Davies-Bouldin by k",
    "Segments in 2-D PCA",
    "Segment profiles",
    "Propensity model",
    "ROC and precision-recall curves",
    "Calibration curve",
    "Lift chart",
    "SHAP summary",
)


def test_report_is_one_self_contained_html_document(report: str) -> None:
    assert report.startswith("<!DOCTYPE html>")
    assert report.count("<html") == 1 and report.rstrip().endswith("</html>")
    # The title is escaped, not injected.
    assert "<title>Test &lt;run&gt;</title>" in report
    # Nothing is fetched: no external src/href, no scripts, no URL at all.
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", report)
    assert "http://" not in report and "https://" not in report
    assert "<script" not in report and "<img" not in report


def test_report_has_every_section_and_one_svg_per_plot(report: str) -> None:
    headings = re.findall(r"<h[23][^>]*>(.*?)</h[23]>", report)
    for heading in HEADINGS:
        assert heading in headings, heading
    assert report.count("<svg") == len(PLOTS)
    assert re.findall(r'<svg[^>]*data-plot="([a-z_]+)"', report) == list(PLOTS)
    assert report.count("</svg>") == len(PLOTS)


def test_report_shows_the_metrics_segments_and_decisions(
    result: TrainResult, report: str
) -> None:
    m = result.propensity.metrics
    for key in (
        "roc_auc",
        "pr_auc",
        "brier",
        "lift_top_decile",
        "baseline_roc_auc",
        "baseline_pr_auc",
        "baseline_lift_top_decile",
        "logistic_roc_auc",
        "logistic_pr_auc",
        "logistic_brier",
        "logistic_lift_top_decile",
    ):
        assert f"{m[key]:.4f}" in report, key
    text = html.unescape(report)
    for segment in result.segmenter.segments:
        assert segment.name in text
        assert f"{segment.id}: {segment.name}" in text  # legend and heatmap rows
    assert "holdout ROC-AUC 0.7 <= champion's 0.8" in text
    assert "segscore-propensity:test" in text
    assert "12,358" in text  # events: applied + duplicate + late
    assert "2024-01-01 00:00 UTC" in text
    assert f"chosen k={int(result.segmenter.metrics['k'])}" in text


def test_banner_is_loud_only_when_the_model_loses(
    result: TrainResult, tmp_path: Path
) -> None:
    assert result.propensity.metrics["beats_baselines"] in (0.0, 1.0)
    original = dict(result.propensity.metrics)
    try:
        result.propensity.metrics["beats_baselines"] = 0.0
        losing = write_report(result, tmp_path / "losing.html").read_text()
        result.propensity.metrics["beats_baselines"] = 1.0
        winning = write_report(result, tmp_path / "winning.html").read_text()
    finally:
        result.propensity.metrics.clear()
        result.propensity.metrics.update(original)
    assert 'class="banner fail"' in losing and "does NOT beat" in losing
    assert 'class="banner fail"' not in winning
    assert 'class="banner ok"' in winning


def test_report_without_evaluation_or_frame_still_renders(
    result: TrainResult, tmp_path: Path
) -> None:
    # A result rebuilt from stored bundles has no holdout and no frame.
    bare = TrainResult(
        segmenter=result.segmenter,
        propensity=result.propensity,
        states={},
        backfill=result.backfill,
        snapshots=[],
        window=result.window,
    )
    evaluation, result.propensity.evaluation = result.propensity.evaluation, None
    try:
        text = write_report(bare, tmp_path / "bare.html").read_text()
    finally:
        result.propensity.evaluation = evaluation
    assert "No holdout evaluation" in text
    assert "No segmentation frame" in text
    assert re.findall(r'data-plot="([a-z_]+)"', text) == [
        "k_selection",
        "segment_profiles",
    ]


# --- the numbers, against scikit-learn ---------------------------------------------


def _scored(n: int = 300, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(int)
    # Rounded so that ties occur, which is where curve implementations differ.
    scores = np.round(np.clip(0.3 * labels + rng.random(n) * 0.7, 0, 1), 2)
    return labels, scores


def test_roc_points_match_sklearn() -> None:
    labels, scores = _scored()
    fpr, tpr = roc_points(labels, scores)
    expected_fpr, expected_tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, expected_fpr)
    np.testing.assert_allclose(tpr, expected_tpr)
    with pytest.raises(ValueError, match="both classes"):
        roc_points(np.zeros(4), np.arange(4.0))


def test_pr_points_match_sklearn() -> None:
    labels, scores = _scored()
    precision, recall = pr_points(labels, scores)
    expected_precision, expected_recall, _ = precision_recall_curve(labels, scores)
    np.testing.assert_allclose(precision, expected_precision)
    np.testing.assert_allclose(recall, expected_recall)


def test_calibration_bins_match_sklearn() -> None:
    labels, scores = _scored()
    # Edge values (exactly 0.1, 0.2, ...) and empty bins included on purpose.
    scores = np.r_[scores * 0.75, 0.1, 0.2, 0.0, 1.0]
    labels = np.r_[labels, 0, 1, 0, 1]
    bins = calibration_bins(labels, scores, n_bins=10)
    observed, predicted = calibration_curve(labels, scores, n_bins=10)
    np.testing.assert_allclose(bins.observed, observed)
    np.testing.assert_allclose(bins.predicted, predicted)
    assert bins.count.sum() == len(scores)
    # Nothing lands in (0.8, 0.9]; 1.0 fills the last bin.
    assert 8 not in bins.bin.tolist() and bins.bin[-1] == 9
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        calibration_bins(np.array([0, 1]), np.array([0.5, 1.5]))


def test_lift_by_decile() -> None:
    labels, scores = _scored(n=300)
    table = lift_by_decile(labels, scores)
    assert table.size.tolist() == [30] * 10
    assert table.lift[0] == pytest.approx(lift_at(labels, scores))
    # Rows are split, never lost: the overall cumulative lift is 1.
    assert table.cumulative_lift[-1] == pytest.approx(1.0)
    np.testing.assert_allclose(table.rate * table.size / labels.sum(), table.lift / 10)
    # Perfect ranking of 20% buyers: the top two deciles hold them all.
    perfect = np.r_[np.ones(20), np.zeros(80)]
    ranked = lift_by_decile(perfect, np.linspace(1, 0, 100))
    assert ranked.lift.tolist() == [5.0, 5.0] + [0.0] * 8
    assert ranked.cumulative_lift[1] == pytest.approx(5.0)
    # Uneven sizes: earlier groups take the extra rows.
    assert (
        lift_by_decile(perfect[:23], np.arange(23.0)).size.tolist() == [3] * 3 + [2] * 7
    )


def test_k_selection_reads_the_per_k_scores() -> None:
    metrics = {
        "k": 4.0,
        "silhouette": 0.5,
        "silhouette_k10": 0.1,
        "silhouette_k4": 0.5,
        "davies_bouldin_k4": 0.9,
        "silhouette_k3": 0.4,
        "davies_bouldin_k3": 1.1,
    }
    rows = k_selection(metrics)
    assert [r[0] for r in rows] == [3, 4, 10]
    assert rows[1] == (4, 0.5, 0.9)
    assert np.isnan(rows[2][2])


def test_shap_summary_is_exact_and_sorted(result: TrainResult) -> None:
    prop = result.propensity
    frame = prop.evaluation.frame
    summary = shap_summary(prop.booster, frame, prop.features, sample_size=50)
    assert summary.values.shape == (50, len(prop.features))
    assert sorted(summary.features) == sorted(prop.features)
    assert np.all(np.diff(summary.mean_abs) <= 0)
    # TreeSHAP is exact: contributions plus the base value give the raw margin.
    full = shap_summary(prop.booster, frame, prop.features, sample_size=len(frame))
    margin = prop.booster.predict(
        frame[prop.features].to_numpy(dtype=np.float64), raw_score=True
    )
    np.testing.assert_allclose(full.values.sum(axis=1) + full.base_value, margin)


def test_profile_gaps_use_the_log_scale_against_the_median(
    result: TrainResult,
) -> None:
    seg = result.segmenter
    frame = result.segmentation_frame
    assert frame is not None
    gaps = profile_gaps(seg.segments, seg.features, frame)
    assert gaps.gap.shape == (len(seg.segments), len(seg.features))
    j = seg.features.index("orders_90d")
    values = frame["orders_90d"].to_numpy()
    median = np.median(values)
    first = seg.segments[0]
    expected = (np.log1p(first.profile["orders_90d"]) - np.log1p(median)) / np.std(
        np.log1p(values)
    )
    assert gaps.median[j] == pytest.approx(median)
    assert gaps.gap[0, j] == pytest.approx(expected)


def test_thin_keeps_both_ends_and_bounds_the_vertices() -> None:
    x = np.linspace(0, 1, 10_001)
    tx, ty = thin(x, x**2, max_points=100)
    assert len(tx) == 100 and tx[0] == 0 and tx[-1] == 1
    np.testing.assert_allclose(ty, tx**2)
    small = np.arange(5.0)
    assert thin(small, small, max_points=100)[0] is small


def test_metrics_say_who_the_holdout_is() -> None:
    from training.report.propensity_section import metrics_section

    metrics = {
        "roc_auc": 0.8,
        "baseline_roc_auc": 0.7,
        "logistic_roc_auc": 0.75,
        "n_holdout": 23570.0,
        "n_train": 111392.0,
        "holdout_cutoff_ts": 898560000.0,  # 1998-06-23 00:00 UTC
        "tuned_by_users": 0.0,
    }
    text = metrics_section(metrics)
    assert "Holdout: 23,570 rows from 1998-06-23 00:00 UTC" in text
    assert "everyone one label horizon earlier" in text and "111,392" in text
    text = metrics_section({**metrics, "tuned_by_users": 1.0})
    assert "by user hash" in text
    assert "Holdout:" not in metrics_section({"roc_auc": 0.8})
