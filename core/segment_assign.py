"""A fitted segmentation pipeline's ``predict``, replayed in plain numpy.

scikit-learn spends ~0.25 ms per ``predict`` call on input validation and
thread-pool set-up, most of a one-user request; the arithmetic itself is
microseconds. And a serving worker need not import scikit-learn at all (with
SciPy it is ~100 MB of each worker): :func:`replay_params` turns the fitted
steps into plain numbers when the model is registered, stored beside the
pipeline, and :func:`assigner_from_params` replays them. The registry checks the
replay against the pipeline when it stores them, and again against the
pipeline's own answers (stored with them) when it loads them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Assigner = Callable[[np.ndarray], np.ndarray]


def _step_params(step: Any) -> dict[str, Any] | None:
    """A fitted preprocessing step as plain numbers, if it is a known one."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    if isinstance(step, FunctionTransformer):
        if step.func is np.log1p and step.inverse_func is None and not step.kw_args:
            return {"kind": "log1p"}
        return None
    if isinstance(step, StandardScaler):
        return {
            "kind": "standardise",
            "mean": step.mean_.tolist() if step.with_mean else None,
            "scale": step.scale_.tolist() if step.with_std else None,
        }
    if isinstance(step, PCA) and not step.whiten:
        return {
            "kind": "project",
            "mean": step.mean_.tolist(),
            "components": step.components_.tolist(),
        }
    return None


def replay_params(pipeline: Any) -> dict[str, Any] | None:
    """``[transforms..., KMeans]`` as plain numbers (JSON-ready), else ``None``.

    Known steps: log1p, StandardScaler, PCA without whitening, KMeans.
    """
    from sklearn.cluster import KMeans

    *prep, (_, last) = pipeline.steps
    if not isinstance(last, KMeans):
        return None
    steps = [_step_params(step) for _, step in prep]
    if any(step is None for step in steps):
        return None
    return {"steps": steps, "centers": last.cluster_centers_.tolist()}


def _step(params: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
    kind = params["kind"]
    if kind == "log1p":
        return np.log1p
    if kind == "standardise":
        mean = None if params["mean"] is None else np.asarray(params["mean"])
        scale = None if params["scale"] is None else np.asarray(params["scale"])

        def standardise(x: np.ndarray) -> np.ndarray:
            if mean is not None:
                x = x - mean
            return x / scale if scale is not None else x

        return standardise
    if kind == "project":
        mean, components = np.asarray(params["mean"]), np.asarray(params["components"])
        return lambda x: (x - mean) @ components.T
    raise ValueError(f"unknown segmenter step {kind!r}")


def assigner_from_params(params: dict[str, Any]) -> Assigner:
    """The segment of each row, from :func:`replay_params`' numbers."""
    steps = [_step(step) for step in params["steps"]]
    centers = np.asarray(params["centers"], dtype=np.float64)
    center_norms = (centers**2).sum(axis=1)

    def assign(matrix: np.ndarray) -> np.ndarray:
        x = matrix
        for step in steps:
            x = step(x)
        # argmin |x - c|^2 = argmin (|c|^2 - 2 x.c): the row norm is common.
        return np.argmin(center_norms - 2.0 * (x @ centers.T), axis=1)

    return assign


def segment_assigner(pipeline: Any) -> Assigner:
    """``pipeline.predict`` in plain numpy where the steps are known ones.

    Any other pipeline falls back to ``pipeline.predict``. The caller checks the
    two agree before a model is used.
    """
    params = replay_params(pipeline)
    if params is None:
        return lambda x: pipeline.predict(x).astype(int)
    return assigner_from_params(params)
