"""Both models as serving uses them, without LightGBM or scikit-learn.

Importing ``lightgbm`` pulls in scikit-learn, SciPy, pandas and pyarrow: ~150 MB
in every serving worker, for models whose serving arithmetic is a few numpy
operations. So when a model is registered, :func:`propensity_check` and
:func:`segmenter_check` work out whether the numpy replays reproduce it
(:mod:`core.tree_predict` and :mod:`core.tree_shap` for the booster read from its
own ``model.txt``; :mod:`core.segment_assign` for the pipeline) and store the
real model's answers on probe rows beside it. A serving load then builds
:class:`LeanBooster` and :class:`LeanPipeline` from those files and checks them
against the stored answers before use; a model registered before these files
existed, or one the replays do not cover, is loaded with its library as before.

:class:`LeanBooster` answers ``predict`` for rows holding a NaN (which only a
direct caller passes: the scoring path fills missing values) with the real
booster, loaded on first need.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.lgbm_text import ModelTextError, parse_model_text
from core.segment_assign import Assigner, assigner_from_params, replay_params
from core.tree_predict import TreeArrays
from core.tree_shap import TreeShapTables, Unsupported, probe_rows

logger = logging.getLogger(__name__)

PROPENSITY_CHECK = "serving_check.json"
SEGMENTER_REPLAY = "replay.json"
# How close the tables' SHAP values must be to LightGBM's (as checked_tables).
_RTOL, _ATOL = 1e-9, 1e-12


class ReplayMismatch(ValueError):
    """A stored replay no longer reproduces the model's recorded answers."""


@dataclass
class LeanBooster:
    """What serving calls of a ``lightgbm.Booster``, answered in numpy."""

    model_file: Path
    dump: dict[str, Any]
    trees: TreeArrays
    tables: TreeShapTables
    _booster: Any = field(default=None, repr=False)

    def feature_name(self) -> list[str]:
        """The booster's input names, in order."""
        return list(self.dump["feature_names"])

    def dump_model(self) -> dict[str, Any]:
        """The trees in ``Booster.dump_model()``'s layout (the keys serving reads)."""
        return self.dump

    def predict(
        self,
        data: np.ndarray,
        *,
        raw_score: bool = False,
        pred_contrib: bool = False,
        num_threads: int = 0,
    ) -> np.ndarray:
        """``Booster.predict`` for raw scores and SHAP values of rows without NaN.

        Anything else (a NaN, a probability) is the real booster's.
        """
        matrix = np.asarray(data, dtype=np.float64)
        if (raw_score or pred_contrib) and not np.isnan(matrix).any():
            if pred_contrib:
                return self.tables.contributions(matrix)
            return self.trees.margins(matrix)
        return self.booster().predict(
            matrix,
            raw_score=raw_score,
            pred_contrib=pred_contrib,
            num_threads=num_threads,
        )

    def booster(self) -> Any:
        """The real booster, loaded (with LightGBM) on first need."""
        if self._booster is None:
            import lightgbm as lgb

            logger.info("loading LightGBM for %s", self.model_file)
            self._booster = lgb.Booster(model_file=str(self.model_file))
        return self._booster


@dataclass
class LeanPipeline:
    """What serving calls of the fitted segmentation pipeline, in numpy."""

    assign: Assigner

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Segment ids of the rows."""
        return self.assign(np.asarray(matrix, dtype=np.float64))


def _replays(text: str) -> tuple[dict[str, Any], TreeArrays, TreeShapTables]:
    dump = parse_model_text(text)
    return dump, TreeArrays.from_dump(dump), TreeShapTables.from_dump(dump)


def propensity_check(booster: Any, model_file: Path) -> dict[str, Any] | None:
    """The booster's answers on probe rows, if the replays of ``model_file`` match.

    Probe rows lie at and just above every split threshold; the replays must give
    LightGBM's raw scores exactly and its SHAP values to rounding. ``None`` when
    they do not (or cannot): serving then loads the booster itself.
    """
    try:
        _, trees, tables = _replays(model_file.read_text())
    except (Unsupported, ModelTextError) as exc:
        logger.info("%s: served with LightGBM: %s", model_file, exc)
        return None
    rows = np.vstack([probe_rows(tables), np.zeros((1, tables.n_features))])
    margins = booster.predict(rows, raw_score=True, num_threads=1)
    contributions = booster.predict(rows, pred_contrib=True, num_threads=1)
    if not np.array_equal(trees.margins(rows), margins) or not np.allclose(
        tables.contributions(rows), contributions, rtol=_RTOL, atol=_ATOL
    ):
        logger.warning("%s: replay disagrees with LightGBM; not used", model_file)
        return None
    return {
        "rows": rows.tolist(),
        "margins": margins.tolist(),
        "contributions": contributions.tolist(),
    }


def lean_booster(model_file: Path, check: dict[str, Any]) -> LeanBooster:
    """A :class:`LeanBooster` of ``model_file``, checked against ``check``.

    Raises:
        ReplayMismatch: The replays do not give the recorded answers.
    """
    try:
        dump, trees, tables = _replays(model_file.read_text())
    except (Unsupported, ModelTextError) as exc:
        raise ReplayMismatch(f"{model_file}: {exc}") from exc
    rows = np.asarray(check["rows"], dtype=np.float64)
    if not np.array_equal(trees.margins(rows), np.asarray(check["margins"])):
        raise ReplayMismatch(f"{model_file}: raw scores differ from the recorded ones")
    if not np.allclose(
        tables.contributions(rows), np.asarray(check["contributions"]), _RTOL, _ATOL
    ):
        raise ReplayMismatch(f"{model_file}: SHAP values differ from the recorded ones")
    return LeanBooster(model_file=model_file, dump=dump, trees=trees, tables=tables)


def segmenter_check(pipeline: Any, probe: np.ndarray) -> dict[str, Any] | None:
    """The pipeline as numbers plus its segments of ``probe``, if the replay agrees."""
    params = replay_params(pipeline)
    if params is None:
        return None
    labels = pipeline.predict(probe).astype(int)
    if not np.array_equal(assigner_from_params(params)(probe), labels):
        logger.warning("segmenter replay disagrees with the pipeline; not used")
        return None
    return {"params": params, "rows": probe.tolist(), "labels": labels.tolist()}


def lean_pipeline(replay: dict[str, Any]) -> LeanPipeline:
    """A :class:`LeanPipeline` from :func:`segmenter_check`'s record.

    Raises:
        ReplayMismatch: The replay does not give the recorded segments.
    """
    assign = assigner_from_params(replay["params"])
    rows = np.asarray(replay["rows"], dtype=np.float64)
    if not np.array_equal(assign(rows), np.asarray(replay["labels"])):
        raise ReplayMismatch("segmenter replay differs from the recorded segments")
    return LeanPipeline(assign)


def write_json(path: Path, payload: dict[str, Any] | None) -> None:
    """Write ``payload`` as JSON at ``path`` (nothing when ``None``)."""
    if payload is not None:
        path.write_text(json.dumps(payload))


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON at ``path``, ``None`` when there is no such file."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
