"""The KMeans segmenter: fit, choose k, keep ids stable, name the segments.

The pipeline is ``log1p -> StandardScaler -> KMeans`` built only from stock
scikit-learn and numpy parts, so loading it needs no code from this package.
Segments should describe durable behaviour, so the scaler's output is weighted:
short-window counts and the recency are noisy at a single snapshot (one session
more or less flips them) and count half; without that, silhouette prefers
splitting "visited today" from "did not", which is recency, not a customer type.

Real logs hold many users with the same feature vector (every lapsed one-time
buyer looks alike), so KMeans fits the distinct vectors weighted by how many
users share each, and silhouette and Davies-Bouldin score distinct vectors:
thousands of identical rows at distance zero would otherwise make any k look
excellent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import davies_bouldin_score, silhouette_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from core.feature_catalog import SEGMENTATION_FEATURES
from core.registry import SegmenterBundle
from training.segment_names import describe_segments

log = logging.getLogger(__name__)

K_RANGE = range(3, 9)

# A segment holding more than this share is "dominant". k is chosen on distinct
# rows, so a segment holding most distinct rows is split when another k does so
# without losing much silhouette; one still holding most users after that is a
# mode of the data (often many users with one feature vector) and is reported.
DOMINANT_SHARE = 0.6
# Relative silhouette a k may give up against the best k to split a dominant segment.
SILHOUETTE_TOLERANCE = 0.25

# KMeans restarts per k: k-means++ starts make a few enough, and the search
# runs six k's on up to tens of thousands of distinct rows.
N_INIT = 4

# Relative weight of each standardised input in the KMeans distance (default 1).
FEATURE_WEIGHTS: dict[str, float] = {
    "product_views_24h": 0.5,
    "cart_adds_24h": 0.5,
    "purchases_7d": 0.5,
    "revenue_7d": 0.5,
    "hours_since_last_event": 0.5,
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


@dataclass
class _Candidate:
    """KMeans at one k, fitted on the distinct rows, with its scores."""

    kmeans: KMeans
    silhouette: float
    davies_bouldin: float
    largest_share: float  # of users
    largest_distinct_share: float  # of distinct rows


def _candidates(
    points: np.ndarray,
    counts: np.ndarray,
    k_range: Sequence[int],
    sample: np.ndarray,
    seed: int,
) -> dict[int, _Candidate]:
    found: dict[int, _Candidate] = {}
    for k in k_range:
        if k >= len(points):
            continue
        kmeans = KMeans(n_clusters=k, n_init=N_INIT, random_state=seed).fit(
            points, sample_weight=counts
        )
        labels = kmeans.labels_[sample]
        if not 2 <= len(set(labels.tolist())) < len(sample):
            continue
        users = np.bincount(kmeans.labels_, weights=counts, minlength=k)
        rows = np.bincount(kmeans.labels_, minlength=k)
        found[k] = _Candidate(
            kmeans,
            float(silhouette_score(points[sample], labels)),
            float(davies_bouldin_score(points[sample], labels)),
            float(users.max() / counts.sum()),
            float(rows.max() / len(points)),
        )
        log.info(
            "segmenter: k=%d silhouette=%.3f largest=%.0f%%",
            k,
            found[k].silhouette,
            100 * found[k].largest_share,
        )
    return found


def _choose(found: dict[int, _Candidate]) -> int:
    """The k to keep: the best silhouette, unless its largest segment holds most
    distinct rows and another k that does not is within the tolerance.

    Everything here is measured on distinct rows, so copies of a row cannot
    change k.
    """
    best = max(found, key=lambda k: (found[k].silhouette, -k))
    if found[best].largest_distinct_share <= DOMINANT_SHARE:
        return best
    floor = found[best].silhouette - SILHOUETTE_TOLERANCE * abs(found[best].silhouette)
    split = [
        k
        for k, c in found.items()
        if c.largest_distinct_share <= DOMINANT_SHARE and c.silhouette >= floor
    ]
    return max(split, key=lambda k: (found[k].silhouette, -k)) if split else best


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
        k_range: Candidate numbers of segments; the best silhouette on distinct
            rows wins, unless its largest segment holds more than
            :data:`DOMINANT_SHARE` of the distinct rows and another k splits it
            within :data:`SILHOUETTE_TOLERANCE`.
        sample_size: Distinct rows used for the silhouette and Davies-Bouldin
            scores.
        seed: Seed of KMeans and the scoring sample.
        previous: The model in production; its segment ids are kept for the
            segments that match its centroids.

    Returns:
        The fitted bundle: pipeline, named segments, population medians as
        defaults, and metrics: k, silhouette, Davies-Bouldin (both on distinct
        rows), inertia, rows, distinct rows, ``largest_share`` of a segment
        (of users; ``largest_distinct_share`` of distinct rows),
        ``identical_share`` (largest group of users with equal features) and
        ``dominant_mode`` (1.0 when one segment still holds more than
        :data:`DOMINANT_SHARE` of users; :func:`dominant_mode_sentence` says so
        in words).
    """
    features = list(features)
    data = frame[features].to_numpy(dtype=np.float64)
    if len(data) < 2 * max(k_range):
        raise ValueError(
            f"frame: {len(data)} rows are too few to choose k in {list(k_range)}"
        )
    if (data < 0).any():
        raise ValueError("frame: segmentation features must be >= 0")
    distinct, inverse, counts = np.unique(
        data, axis=0, return_inverse=True, return_counts=True
    )
    inverse = inverse.reshape(-1)
    weights = counts.astype(np.float64)

    # Scaling does not depend on k: fit it once, then cluster for each k. It is
    # fitted on distinct rows so that copies of one vector do not reshape the
    # space the other users are compared in.
    prep = _preprocessing(features).fit(distinct)
    _weight_scaler(prep.named_steps["scale"], features)
    points = prep.transform(distinct)
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(points), size=min(sample_size, len(points)), replace=False)
    found = _candidates(points, weights, k_range, sample, seed)
    if not found:
        raise ValueError(
            f"frame: {len(distinct)} distinct rows give no k in {list(k_range)} "
            "two or more non-empty segments"
        )
    k = _choose(found)
    chosen = found[k]
    one_mode = chosen.largest_share > DOMINANT_SHARE
    kmeans = chosen.kmeans
    if previous is not None:
        _align_ids(kmeans, distinct, weights, features, previous)
    pipeline = Pipeline([*prep.steps, ("kmeans", kmeans)])
    labels = kmeans.labels_[inverse]

    metrics = {
        "k": float(k),
        "silhouette": chosen.silhouette,
        "davies_bouldin": chosen.davies_bouldin,
        "inertia": float(kmeans.inertia_),
        "n_rows": float(len(data)),
        "n_distinct_rows": float(len(distinct)),
        "largest_share": chosen.largest_share,
        "largest_distinct_share": chosen.largest_distinct_share,
        "identical_share": float(counts.max() / len(data)),
        "dominant_mode": float(one_mode),
    }
    for key, cand in sorted(found.items()):
        metrics[f"silhouette_k{key}"] = cand.silhouette
        metrics[f"davies_bouldin_k{key}"] = cand.davies_bouldin
    segments = describe_segments(frame[features], labels, features, FEATURE_WEIGHTS)
    defaults = {n: float(v) for n, v in frame[features].median().items()}
    log.info(
        "segmenter: k=%d silhouette=%.3f davies_bouldin=%.3f: %s",
        k,
        chosen.silhouette,
        chosen.davies_bouldin,
        "; ".join(s.description for s in segments),
    )
    if one_mode:
        log.warning("segmenter: %s", dominant_mode_sentence(metrics))
    return SegmenterBundle(
        pipeline=pipeline,
        features=features,
        segments=segments,
        defaults=defaults,
        metrics=metrics,
    )


def dominant_mode_sentence(metrics: dict[str, float]) -> str:
    """The sentence the report shows when one segment holds most users, else "".

    Args:
        metrics: A segmenter bundle's metrics.

    Returns:
        One sentence naming the share of the dominant segment and of users with
        identical features, or ``""`` when the data has no dominant mode.
    """
    if metrics.get("dominant_mode", 0.0) < 0.5:
        return ""
    share = metrics.get("largest_share", float("nan"))
    identical = metrics.get("identical_share", 0.0)
    sentence = f"One segment holds {share:.0%} of users: the data has one dominant mode"
    if identical >= 0.05:
        sentence += f" ({identical:.0%} of users have identical feature values)"
    elif metrics.get("largest_distinct_share", 1.0) > DOMINANT_SHARE:
        sentence += ", and no k tried splits it without losing silhouette"
    else:
        sentence += " (many of its users have nearly the same feature values)"
    return sentence + "."


def _align_ids(
    kmeans: KMeans,
    distinct: np.ndarray,
    counts: np.ndarray,
    features: Sequence[str],
    previous: SegmenterBundle,
) -> None:
    """Renumber ``kmeans`` so each segment keeps the id of the previous segment
    that holds most of its members (today's users scored by both models).

    ``distinct`` are the raw distinct rows KMeans was fitted on and ``counts``
    the users sharing each. New segments without a counterpart take the ids the
    previous model lacks.
    """
    if list(previous.features) != list(features):
        log.warning("segmenter: previous model has other features; ids not aligned")
        return
    k = kmeans.n_clusters
    new = kmeans.labels_
    old = previous.assign(distinct)
    ids = max(k, int(old.max()) + 1)
    overlap = np.zeros((k, ids))
    np.add.at(overlap, (new, old), counts)
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
