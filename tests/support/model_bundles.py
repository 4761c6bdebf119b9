"""Tiny segmenter and propensity bundles trained on synthetic data, for tests.

:func:`tiny_bundles` returns bundles in memory (the scoring and model-manager unit
tests); :func:`save_tiny_models` trains its own pair and saves it with the registry
(the tests that start the real service).
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
from sklearn.cluster import KMeans
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from core.feature_catalog import PROPENSITY_FEATURES, SEGMENTATION_FEATURES
from core.registry import (
    PropensityBundle,
    Segment,
    SegmenterBundle,
    save_propensity,
    save_segmenter,
)
from infra.settings import Settings

# The Platt calibration of the saved tiny propensity model: (slope, intercept).
TINY_CALIBRATION = (0.9, 0.1)


def tiny_bundles(seed: int = 0) -> tuple[SegmenterBundle, PropensityBundle]:
    """A segmenter (3 clusters) and a propensity model, not saved anywhere.

    Each seed gives a different pair. The propensity model's calibration is not
    the identity, so a test can tell calibrated from raw probabilities.
    """
    rng = np.random.default_rng(seed)
    n = 400
    seg_x = rng.gamma(2.0, 2.0, size=(n, len(SEGMENTATION_FEATURES)))
    pipeline = Pipeline(
        [
            ("scale", StandardScaler()),
            ("kmeans", KMeans(n_clusters=3, n_init=3, random_state=seed)),
        ]
    ).fit(seg_x)
    labels = pipeline.predict(seg_x)
    segments = [
        Segment(
            id=i,
            name=f"segment-{i}",
            description=f"synthetic segment {i}",
            size=int((labels == i).sum()),
            profile={
                f: float(seg_x[labels == i, j].mean())
                for j, f in enumerate(SEGMENTATION_FEATURES)
            },
        )
        for i in range(3)
    ]
    segmenter = SegmenterBundle(
        pipeline=pipeline,
        features=list(SEGMENTATION_FEATURES),
        segments=segments,
        defaults={
            f: float(np.median(seg_x[:, j]))
            for j, f in enumerate(SEGMENTATION_FEATURES)
        },
        tag="segscore-segmenter:test",
    )

    prop_x = rng.gamma(2.0, 2.0, size=(n, len(PROPENSITY_FEATURES)))
    carts = PROPENSITY_FEATURES.index("cart_adds_24h")
    recency = PROPENSITY_FEATURES.index("hours_since_last_event")
    logit = 0.8 * prop_x[:, carts] - 0.3 * prop_x[:, recency] - 1.0
    labels_y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 7, "min_data_in_leaf": 5, "verbose": -1},
        lgb.Dataset(prop_x, labels_y, feature_name=list(PROPENSITY_FEATURES)),
        num_boost_round=25,
    )
    propensity = PropensityBundle(
        booster=booster,
        features=list(PROPENSITY_FEATURES),
        defaults={
            f: float(np.median(prop_x[:, j])) for j, f in enumerate(PROPENSITY_FEATURES)
        },
        calibration=(0.8, -0.2),
        tag="segscore-propensity:test",
    )
    return segmenter, propensity


def save_tiny_models(
    settings: Settings, seed: int = 7, rounds: int = 20
) -> tuple[str, str]:
    """Train tiny models on synthetic data and save them with the registry.

    Returns the segmenter's and the propensity model's tags (not promoted).
    """
    rng = np.random.default_rng(seed)
    n = 300
    seg_x = rng.gamma(2.0, 2.0, size=(n, len(SEGMENTATION_FEATURES)))
    pipeline = Pipeline(
        [
            ("scale", StandardScaler()),
            ("kmeans", KMeans(n_clusters=3, n_init=3, random_state=0)),
        ]
    ).fit(seg_x)
    labels = pipeline.predict(seg_x)
    segmenter = SegmenterBundle(
        pipeline=pipeline,
        features=list(SEGMENTATION_FEATURES),
        segments=[
            Segment(
                id=i,
                name=f"synthetic-{i}",
                description=f"Synthetic segment {i}",
                size=int((labels == i).sum()),
                profile={
                    f: float(seg_x[labels == i, j].mean())
                    for j, f in enumerate(SEGMENTATION_FEATURES)
                },
            )
            for i in range(3)
        ],
        defaults={
            f: float(np.median(seg_x[:, j]))
            for j, f in enumerate(SEGMENTATION_FEATURES)
        },
    )
    prop_x = rng.gamma(2.0, 2.0, size=(n, len(PROPENSITY_FEATURES)))
    logit = prop_x[:, PROPENSITY_FEATURES.index("cart_adds_24h")] - 2.0
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 7, "min_data_in_leaf": 5, "verbose": -1},
        lgb.Dataset(prop_x, y, feature_name=list(PROPENSITY_FEATURES)),
        num_boost_round=rounds,
    )
    propensity = PropensityBundle(
        booster=booster,
        features=list(PROPENSITY_FEATURES),
        defaults={
            f: float(np.median(prop_x[:, j])) for j, f in enumerate(PROPENSITY_FEATURES)
        },
        calibration=TINY_CALIBRATION,
    )
    provenance = {"source": "tests/support/model_bundles.py"}
    return (
        save_segmenter(segmenter, settings, provenance),
        save_propensity(propensity, settings, provenance),
    )
