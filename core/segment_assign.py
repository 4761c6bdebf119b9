"""A fitted segmentation pipeline's ``predict``, replayed in plain numpy.

scikit-learn spends ~0.25 ms per ``predict`` call on input validation and
thread-pool set-up, most of a one-user request; the arithmetic itself is
microseconds. :class:`core.scoring.ScoringModels` checks the replay against the
pipeline before using it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler


def _step_transform(step: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """A numpy equivalent of a fitted preprocessing step, if it is a known one."""
    if isinstance(step, FunctionTransformer):
        if step.func is np.log1p and step.inverse_func is None and not step.kw_args:
            return np.log1p
        return None
    if isinstance(step, StandardScaler):
        mean = step.mean_ if step.with_mean else None
        scale = step.scale_ if step.with_std else None

        def standardise(x: np.ndarray) -> np.ndarray:
            if mean is not None:
                x = x - mean
            return x / scale if scale is not None else x

        return standardise
    if isinstance(step, PCA) and not step.whiten:
        mean, components = step.mean_, step.components_
        return lambda x: (x - mean) @ components.T
    return None


def segment_assigner(pipeline: Pipeline) -> Callable[[np.ndarray], np.ndarray]:
    """``pipeline.predict`` for ``[transforms..., KMeans]``, in plain numpy.

    scikit-learn spends ~0.25 ms per ``predict`` call on input validation and
    thread-pool set-up, most of a one-user request; the arithmetic itself is
    microseconds. Known steps (log1p, StandardScaler, PCA without whitening,
    KMeans) are replayed with their fitted parameters; any other pipeline falls
    back to ``pipeline.predict``. :meth:`ScoringModels.from_bundles` checks the
    two agree before a model is used.
    """
    *prep, (_, last) = pipeline.steps
    transforms = [_step_transform(step) for _, step in prep]
    if not isinstance(last, KMeans) or any(t is None for t in transforms):
        return lambda x: pipeline.predict(x).astype(int)
    centers = last.cluster_centers_
    center_norms = (centers**2).sum(axis=1)
    steps = [t for t in transforms if t is not None]

    def assign(matrix: np.ndarray) -> np.ndarray:
        x = matrix
        for step in steps:
            x = step(x)
        # argmin |x - c|^2 = argmin (|c|^2 - 2 x.c): the row norm is common.
        return np.argmin(center_norms - 2.0 * (x @ centers.T), axis=1)

    return assign
