"""Helpers for tests that drive the real processes."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from infra import local_stack
from infra.processes import process_env
from infra.settings import PROJECT_ROOT, Settings

T = TypeVar("T")

# The Platt calibration of the tiny propensity model: (slope, intercept).
TINY_CALIBRATION = (0.9, 0.1)


def run_cli(settings: Settings, *args: str, timeout: float = 300) -> str:
    """Run ``segscore ARGS`` as a real subprocess; fail with its output if it fails."""
    env = process_env(settings)
    result = subprocess.run(
        [sys.executable, "-m", "segscore.cli", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"segscore {' '.join(args)} exited {result.returncode}\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result.stdout


def feature_repo_yaml(settings: Settings) -> Path:
    """A feature_store.yaml for the running test stack, outside the source tree."""
    from core.store.feast_config import write_feature_store_yaml

    stack = local_stack.current(settings)
    return write_feature_store_yaml(
        settings, stack.redis_url, settings.home / "feature_store.yaml"
    )


def eventually(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``check`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}: {last!r}")


def assert_features_equal(
    got: dict[str, float | None], want: dict[str, float | None], tol: float = 1e-9
) -> None:
    """Same feature names and values: floats within ``tol``, missing both sides."""
    assert got.keys() == want.keys()
    for name, value in want.items():
        other = got[name]
        if value is None or other is None:
            assert other is value, (name, other, value)
        else:
            assert abs(other - value) <= tol * max(1.0, abs(value)), (
                name,
                other,
                value,
            )


def save_tiny_models(
    settings: Settings, seed: int = 7, rounds: int = 20
) -> tuple[str, str]:
    """Train tiny models on synthetic data and save them with the registry.

    Returns the segmenter's and the propensity model's tags (not promoted).
    """
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
    provenance = {"source": "tests/support.py"}
    return (
        save_segmenter(segmenter, settings, provenance),
        save_propensity(propensity, settings, provenance),
    )
