"""The numbers the training report draws: curves, bins, lift, SHAP, PCA, gaps.

Pure functions over labels, scores and fitted models; the ROC, precision-recall
and calibration numbers equal scikit-learn's, which the unit tests check.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

from core.registry import Segment, SegmenterBundle

# Rows scored for SHAP: TreeSHAP costs trees x leaves x depth per row (about 1 s
# for 2000 rows of a 250-tree booster), and 2000 rows are plenty to rank features.
SHAP_SAMPLE = 2000
# Points drawn in the PCA scatter: beyond these the SVG grows by megabytes
# without showing more.
PCA_SAMPLE = 5000
# Vertices per curve: 100k holdout rows give ~100k distinct thresholds, far more
# than a 400-pixel plot can show.
CURVE_POINTS = 400


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
