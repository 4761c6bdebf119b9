"""The KMeans segmenter: fit, choose k, keep ids stable, name the segments.

The pipeline is ``log1p -> StandardScaler -> KMeans`` built only from stock
scikit-learn and numpy parts, so loading it needs no code from this package.
Segments should describe durable behaviour, so the scaler's output is weighted:
the 24-hour and 7-day purchase counts and the recency are noisy at a single
snapshot (one session more or less flips them) and count half; without that,
silhouette prefers splitting "visited today" from "did not", which is recency,
not a customer type.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import davies_bouldin_score, silhouette_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from core.feature_catalog import CATALOGUE, SEGMENTATION_FEATURES
from core.registry import Segment, SegmenterBundle

log = logging.getLogger(__name__)

K_RANGE = range(3, 9)

# Relative weight of each standardised input in the KMeans distance (default 1).
FEATURE_WEIGHTS: dict[str, float] = {
    "product_views_24h": 0.5,
    "cart_adds_24h": 0.5,
    "purchases_7d": 0.5,
    "revenue_7d": 0.5,
    "hours_since_last_event": 0.5,
}

# Short names for descriptions ("2.4x revenue").
LABELS: dict[str, str] = {
    "events_7d": "weekly events",
    "product_views_24h": "daily product views",
    "cart_adds_24h": "daily cart adds",
    "purchases_7d": "weekly purchases",
    "revenue_7d": "weekly revenue",
    "orders_90d": "orders",
    "revenue_90d": "revenue",
    "avg_order_value_90d": "order value",
    "purchase_days_90d": "purchase days",
    "hours_since_last_event": "time since last visit",
}


def _preprocessing(features: Sequence[str]) -> Pipeline:
    return Pipeline(
        [
            # Counts and amounts are heavy-tailed; log1p puts "2 vs 20 orders" on
            # the same footing as "20 vs 200".
            ("log1p", FunctionTransformer(np.log1p, feature_names_out="one-to-one")),
            ("scale", StandardScaler()),
        ]
    )


def _weight_scaler(scaler: StandardScaler, features: Sequence[str]) -> None:
    # Dividing the fitted scale by w multiplies the standardised value by w, so
    # the weighting lives inside a stock StandardScaler.
    weights = np.array([FEATURE_WEIGHTS.get(n, 1.0) for n in features])
    scaler.scale_ = scaler.scale_ / weights


def fit_segmenter(
    frame: pd.DataFrame,
    features: Sequence[str] = SEGMENTATION_FEATURES,
    k_range: Sequence[int] = K_RANGE,
    sample_size: int = 5000,
    seed: int = 0,
    previous: SegmenterBundle | None = None,
) -> SegmenterBundle:
    """Fit the segmenter on one row per user and describe its segments.

    Args:
        frame: Model matrix with ``features`` as columns (e.g. each user's latest
            snapshot from :func:`latest_per_user`); all values must be >= 0.
        features: Input columns, in the order serving will pass them.
        k_range: Candidate numbers of segments; the best silhouette wins.
        sample_size: Rows used for the silhouette and Davies-Bouldin scores.
        seed: Seed of KMeans and the scoring sample.
        previous: The model in production; its segment ids are kept for the
            segments that match its centroids.

    Returns:
        The fitted bundle: pipeline, named segments, population medians as
        defaults, and metrics (k, silhouette, Davies-Bouldin, inertia, rows).
    """
    features = list(features)
    data = frame[features].to_numpy(dtype=np.float64)
    if len(data) < 2 * max(k_range):
        raise ValueError(
            f"frame: {len(data)} rows are too few to choose k in {list(k_range)}"
        )
    if (data < 0).any():
        raise ValueError("frame: segmentation features must be >= 0")
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(data), size=min(sample_size, len(data)), replace=False)

    # Scaling does not depend on k: fit it once, then cluster for each k.
    prep = _preprocessing(features).fit(data)
    _weight_scaler(prep.named_steps["scale"], features)
    scaled = prep.transform(data)
    best: tuple[float, KMeans] | None = None
    scores: dict[str, float] = {}
    for k in k_range:
        kmeans = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(scaled)
        labels = kmeans.labels_[sample]
        if len(set(labels.tolist())) < 2:
            continue
        score = float(silhouette_score(scaled[sample], labels))
        scores[f"silhouette_k{k}"] = score
        scores[f"davies_bouldin_k{k}"] = float(
            davies_bouldin_score(scaled[sample], labels)
        )
        log.info("segmenter: k=%d silhouette=%.3f", k, score)
        if best is None or score > best[0]:
            best = (score, kmeans)
    if best is None:
        raise ValueError("frame: no k gives two or more non-empty segments")
    silhouette, kmeans = best
    if previous is not None:
        _align_ids(kmeans, scaled, data, features, previous)
    pipeline = Pipeline([*prep.steps, ("kmeans", kmeans)])
    labels = kmeans.predict(scaled)

    metrics = {
        "k": float(kmeans.n_clusters),
        "silhouette": silhouette,
        "davies_bouldin": float(davies_bouldin_score(scaled[sample], labels[sample])),
        "inertia": float(kmeans.inertia_),
        "n_rows": float(len(data)),
        **scores,
    }
    segments = describe_segments(frame[features], labels, features)
    defaults = {n: float(v) for n, v in frame[features].median().items()}
    log.info(
        "segmenter: k=%d silhouette=%.3f davies_bouldin=%.3f: %s",
        kmeans.n_clusters,
        silhouette,
        metrics["davies_bouldin"],
        "; ".join(s.description for s in segments),
    )
    return SegmenterBundle(
        pipeline=pipeline,
        features=features,
        segments=segments,
        defaults=defaults,
        metrics=metrics,
    )


def _align_ids(
    kmeans: KMeans,
    scaled: np.ndarray,
    data: np.ndarray,
    features: Sequence[str],
    previous: SegmenterBundle,
) -> None:
    """Renumber ``kmeans`` so each segment keeps the id of the previous segment
    that holds most of its members (today's users scored by both models).

    New segments without a counterpart take the ids the previous model lacks.
    """
    if list(previous.features) != list(features):
        log.warning("segmenter: previous model has other features; ids not aligned")
        return
    k = kmeans.n_clusters
    new = kmeans.labels_
    old = previous.assign(data)
    ids = max(k, int(old.max()) + 1)
    overlap = np.zeros((k, ids))
    np.add.at(overlap, (new, old), 1.0)
    rows, columns = linear_sum_assignment(-overlap)
    # Matched ids may exceed k-1 when the previous model had more segments;
    # KMeans needs 0..k-1, so those segments take the free ids in order.
    free = iter(sorted(set(range(k)) - {int(c) for c in columns if c < k}))
    target = {
        int(r): (int(c) if c < k else next(free))
        for r, c in zip(rows, columns, strict=True)
    }
    order = np.empty(k, dtype=int)
    for cluster, seg_id in target.items():
        order[seg_id] = cluster
    kmeans.cluster_centers_ = kmeans.cluster_centers_[order]
    remap = np.array([target[c] for c in range(k)], dtype=new.dtype)
    kmeans.labels_ = remap[new]
    moved = sum(1 for c, seg_id in target.items() if c != seg_id)
    log.info("segmenter: ids aligned to %s (%d renumbered)", previous.tag, moved)


def describe_segments(
    frame: pd.DataFrame, labels: np.ndarray, features: Sequence[str]
) -> list[Segment]:
    """Name and describe each segment from its profile vs. the population.

    The name comes from standardised gaps on the log scale the model clusters
    on (robust to a few whales); the description states plain ratios of means
    ("3.2x orders") for the features that differ most, durable ones first.

    Args:
        frame: Raw (unscaled) feature values, one row per user.
        labels: Segment id of each row.
        features: Columns to profile.

    Returns:
        One :class:`Segment` per id, ordered by id, with unique names; the
        profile holds the segment's raw feature means.
    """
    features = list(features)
    values = frame[features].to_numpy(dtype=np.float64)
    logs = np.log1p(np.maximum(values, 0.0))
    pop_log, pop_std = logs.mean(axis=0), logs.std(axis=0)
    pop_mean = values.mean(axis=0)
    segments: list[Segment] = []
    used: set[str] = set()
    for seg_id in sorted(set(labels.tolist())):
        members = labels == seg_id
        gaps = (logs[members].mean(axis=0) - pop_log) / np.where(
            pop_std > 0, pop_std, 1
        )
        z = dict(zip(features, gaps.tolist(), strict=True))
        means = values[members].mean(axis=0)
        ratios = {
            n: float(m / p)
            for n, m, p in zip(features, means, pop_mean, strict=True)
            if p > 1e-9
        }
        ranked = sorted(
            ratios,
            key=lambda n: (
                -abs(np.log(max(ratios[n], 0.05))) * FEATURE_WEIGHTS.get(n, 1.0)
            ),
        )
        name = base = _name(z, ratios.get("orders_90d", 1.0))
        for extra in [n for n in ranked if n not in _NAME_KEYS]:
            if name not in used:
                break
            # Same rule fired twice: qualify by the strongest other difference.
            name = f"{base} ({_phrase(extra, ratios[extra])})"
        suffix = 2
        while name in used:
            name, suffix = f"{base} {suffix}", suffix + 1
        used.add(name)
        highlights = ", ".join(_phrase(n, ratios[n]) for n in ranked[:3])
        segments.append(
            Segment(
                id=int(seg_id),
                name=name,
                description=f"{name}: {highlights or 'close to average'} vs. average",
                size=int(members.sum()),
                profile={n: float(v) for n, v in zip(features, means, strict=True)},
            )
        )
    return segments


_NAME_KEYS = ("orders_90d", "revenue_90d", "avg_order_value_90d")


def _phrase(feature: str, ratio: float) -> str:
    spec = CATALOGUE.get(feature)
    label = LABELS.get(feature) or (spec.description.lower() if spec else feature)
    if ratio < 0.05:
        return f"almost no {label}"
    return f"{ratio:.1f}x {label}"


def _name(z: dict[str, float], order_ratio: float) -> str:
    """A plain-language name from standardised gaps to the population.

    ``order_ratio`` (segment mean orders / population mean) guards the buyer
    names: when few users buy at all, a small negative gap can still mean
    "almost nobody here buys".
    """

    def gap(feature: str) -> float:
        return z.get(feature, 0.0)

    orders, revenue = gap("orders_90d"), gap("revenue_90d")
    basket, events = gap("avg_order_value_90d"), gap("events_7d")
    carts, idle = gap("cart_adds_24h"), gap("hours_since_last_event")
    if orders >= 0.75 and revenue >= 0.75:
        return "High-value frequent buyers"
    if events <= -1.0 or idle >= 0.75:
        return "Lapsed visitors"
    if orders <= -0.75 or order_ratio < 0.2:
        return "Cart abandoners" if carts >= 0.3 else "Window shoppers"
    if basket >= 0.75:
        return "Big-basket buyers"
    if basket <= -0.5:
        return "Bargain buyers"
    return "Occasional buyers"
