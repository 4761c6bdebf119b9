"""Champion/challenger: a new model is promoted only when it beats the champion.

Both are scored on the challenger's own held-out data, so the comparison is fair
to the champion (it never saw those rows either, or saw them no more than the
challenger did): the propensity holdout users for the propensity model, the
segmentation sample for the segmenter. A champion whose features differ from the
challenger's cannot be scored on the same matrix; the challenger then wins, and
the decision says why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, silhouette_score

from core.names import PROPENSITY_MODEL, SEGMENTER_MODEL
from core.registry import PropensityBundle, SegmenterBundle


@dataclass(frozen=True)
class Decision:
    """Whether a challenger replaces the champion, and on what evidence."""

    model: str
    challenger: str
    champion: str | None
    promoted: bool
    reason: str
    metric: str
    challenger_score: float | None = None
    champion_score: float | None = None


def _walkover(
    name: str,
    metric: str,
    challenger: PropensityBundle | SegmenterBundle,
    champion: PropensityBundle | SegmenterBundle | None,
) -> Decision | None:
    """The challenger's win without a contest, when there is none to hold."""
    if champion is None:
        return Decision(name, challenger.tag, None, True, "no champion yet", metric)
    if champion.features != challenger.features:
        return Decision(
            name, challenger.tag, champion.tag, True, "features changed", metric
        )
    return None


def judge_propensity(
    challenger: PropensityBundle, champion: PropensityBundle | None
) -> Decision:
    """ROC-AUC of both on the challenger's holdout; the challenger must be higher."""
    name, metric = PROPENSITY_MODEL, "holdout_roc_auc"
    walkover = _walkover(name, metric, challenger, champion)
    if walkover is not None:
        return walkover
    assert champion is not None  # no champion is a walkover
    evaluation = challenger.evaluation
    if evaluation is None:
        raise ValueError("challenger: no holdout evaluation to compare on")
    data = evaluation.frame[champion.features].to_numpy(dtype=np.float64)
    theirs = champion.probability(champion.margin(data))
    ours = float(roc_auc_score(evaluation.labels, evaluation.model))
    best = float(roc_auc_score(evaluation.labels, theirs))
    won = ours > best
    reason = f"holdout ROC-AUC {ours:.4f} {'>' if won else '<='} champion's {best:.4f}"
    return Decision(name, challenger.tag, champion.tag, won, reason, metric, ours, best)


def judge_segmenter(
    challenger: SegmenterBundle,
    champion: SegmenterBundle | None,
    frame: pd.DataFrame,
    sample_size: int = 5000,
    seed: int = 0,
) -> Decision:
    """Silhouette of both assignments of the same users, in the challenger's space."""
    name, metric = SEGMENTER_MODEL, "silhouette"
    walkover = _walkover(name, metric, challenger, champion)
    if walkover is not None:
        return walkover
    assert champion is not None  # no champion is a walkover
    data = frame[challenger.features].to_numpy(dtype=np.float64)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(data), size=min(sample_size, len(data)), replace=False)
    data = data[rows]
    space = challenger.pipeline[:-1].transform(data)
    scores = []
    for bundle in (challenger, champion):
        labels = bundle.assign(data)
        ok = len(set(labels.tolist())) > 1
        scores.append(float(silhouette_score(space, labels)) if ok else -1.0)
    ours, best = scores
    won = ours > best
    reason = f"silhouette {ours:.4f} {'>' if won else '<='} champion's {best:.4f}"
    return Decision(name, challenger.tag, champion.tag, won, reason, metric, ours, best)
