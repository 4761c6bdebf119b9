"""Promotion: a propensity model must beat its baselines, then its champion.

The baseline gate comes first: a propensity model whose holdout ROC-AUC is not
above every baseline's (recency-frequency heuristic, logistic regression, BG/NBD
when its inputs exist) is never promoted, not even as the first model, unless the
user forces it. Then the champion/challenger comparison: both are scored on the
challenger's own held-out data, so the comparison is fair to the champion (it
never saw those rows either, or saw them no more than the challenger did): the
propensity holdout users for the propensity model, the segmentation sample for
the segmenter. A champion whose features differ from the challenger's cannot be
scored on the same matrix; the challenger then wins, and the decision says why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, silhouette_score

from core.names import PROPENSITY_MODEL, SEGMENTER_MODEL
from core.registry import PropensityBundle, SegmenterBundle

# Metric prefix of each baseline in the propensity metrics, and its name.
BASELINES = {
    "baseline_": "recency-frequency heuristic",
    "logistic_": "logistic regression",
    "bgnbd_": "BG/NBD",
}
NO_BGNBD = "no BG/NBD: inputs missing"


@dataclass(frozen=True)
class BaselineComparison:
    """The model's holdout ROC-AUC against one baseline's."""

    baseline: str
    model_auc: float
    baseline_auc: float

    @property
    def beaten(self) -> bool:
        """Whether the model is strictly better."""
        return self.model_auc > self.baseline_auc

    def __str__(self) -> str:
        sign = ">" if self.beaten else "<="
        return f"{self.model_auc:.4f} {sign} {self.baseline} {self.baseline_auc:.4f}"


@dataclass(frozen=True)
class Gate:
    """Whether a propensity model beats every baseline on its holdout."""

    comparisons: tuple[BaselineComparison, ...]
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """All baselines beaten (and at least one compared)."""
        return bool(self.comparisons) and all(c.beaten for c in self.comparisons)

    @property
    def failed_against(self) -> list[str]:
        """Names of the baselines not beaten."""
        return [c.baseline for c in self.comparisons if not c.beaten]

    @property
    def summary(self) -> str:
        """``passed`` or ``failed: <baselines>``, then each comparison and note."""
        if self.passed:
            head = "passed"
        elif not self.comparisons:
            head = "failed: no holdout ROC-AUC to compare"
        else:
            head = "failed: " + ", ".join(self.failed_against)
        details = [f"ROC-AUC {c}" for c in self.comparisons] + list(self.notes)
        return f"{head} ({'; '.join(details)})" if details else head


def baseline_gate(metrics: Mapping[str, object]) -> Gate:
    """Compare the model's holdout ROC-AUC with each baseline present in ``metrics``.

    Args:
        metrics: Propensity holdout metrics (``roc_auc`` and ``<prefix>roc_auc``
            per baseline, prefixes in :data:`BASELINES`).

    Returns:
        The gate; a missing BG/NBD is noted, not counted as beaten.
    """
    ours = metrics.get("roc_auc")
    if not isinstance(ours, int | float) or not np.isfinite(ours):
        return Gate(comparisons=())
    comparisons = []
    notes = []
    for prefix, name in BASELINES.items():
        theirs = metrics.get(f"{prefix}roc_auc")
        if isinstance(theirs, int | float) and np.isfinite(theirs):
            comparisons.append(BaselineComparison(name, float(ours), float(theirs)))
        elif prefix == "bgnbd_":
            notes.append(NO_BGNBD)
    return Gate(comparisons=tuple(comparisons), notes=tuple(notes))


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
    baselines: tuple[BaselineComparison, ...] = ()
    gate: str = ""
    forced: bool = False


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
    challenger: PropensityBundle,
    champion: PropensityBundle | None,
    *,
    force: bool = False,
) -> Decision:
    """The baseline gate, then ROC-AUC of both on the challenger's holdout.

    Args:
        challenger: The new model, with its holdout metrics and evaluation.
        champion: The serving model, if any.
        force: Promote even when the gate or the champion says no (the
            decision still records both verdicts).

    Returns:
        The decision, with each baseline comparison and the gate summary.
    """
    name, metric = PROPENSITY_MODEL, "holdout_roc_auc"
    gate = baseline_gate(challenger.metrics)
    verdict = _judge_champion(challenger, champion)
    evidence = {"baselines": gate.comparisons, "gate": gate.summary}
    if not gate.passed:
        promoted = force
        reason = f"baseline gate {gate.summary}"
        if force:
            reason = f"forced despite {reason}; {verdict.reason}"
        return Decision(
            name,
            challenger.tag,
            verdict.champion,
            promoted,
            reason,
            metric,
            verdict.challenger_score,
            verdict.champion_score,
            forced=force,
            **evidence,
        )
    reason = verdict.reason
    if force and not verdict.promoted:
        reason = f"forced despite {reason}"
    return Decision(
        name,
        challenger.tag,
        verdict.champion,
        verdict.promoted or force,
        reason,
        metric,
        verdict.challenger_score,
        verdict.champion_score,
        forced=force and not verdict.promoted,
        **evidence,
    )


def _judge_champion(
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
    """Silhouette of both assignments of the same users, in the challenger's space.

    Scored on distinct feature vectors, as the segmenter chooses k: thousands of
    identical users (one-time buyers of a purchase-only log) would otherwise
    inflate both models' silhouettes and hide which one separates the rest.
    """
    name, metric = SEGMENTER_MODEL, "silhouette"
    walkover = _walkover(name, metric, challenger, champion)
    if walkover is not None:
        return walkover
    assert champion is not None  # no champion is a walkover
    data = np.unique(frame[challenger.features].to_numpy(dtype=np.float64), axis=0)
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
