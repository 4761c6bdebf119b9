"""The purchase-propensity model: LightGBM, temporal split, Platt calibration.

Rows are (user, snapshot) pairs. The earlier snapshots train, the later ones
validate; training snapshots whose label horizon reaches into the validation period
are dropped ("purged"), or the booster would learn from purchases that the
validation features are about to predict. The validation users are split in two by
a hash of their id: one half ("tune") drives early stopping and the Platt
calibration, the other ("holdout") is only scored, so the reported metrics and the
comparisons with the baselines and with the champion are not tuned on.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from core.feature_catalog import PROPENSITY_FEATURES
from core.registry import PropensityBundle
from training.training_set import latest_per_user

log = logging.getLogger(__name__)

PARAMS: dict[str, object] = {
    "objective": "binary",
    "learning_rate": 0.03,
    "num_leaves": 31,
    # Snapshots of one user are near-duplicates; bigger leaves stop the trees
    # from memorising individual users.
    "min_data_in_leaf": 50,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbose": -1,
}


@dataclass(frozen=True)
class TemporalSplit:
    """Which snapshots train and which validate."""

    train: list[pd.Timestamp]
    valid: list[pd.Timestamp]
    purged: list[pd.Timestamp]


def temporal_split(
    snapshots: Sequence[pd.Timestamp],
    horizon_days: int,
    valid_fraction: float = 0.3,
) -> TemporalSplit:
    """Split snapshot instants into earlier (train) and later (valid) ones.

    Args:
        snapshots: The labelled snapshot instants.
        horizon_days: Label horizon; training snapshots closer than this to the
            first validation snapshot are purged.
        valid_fraction: Share of snapshots (at least one) that validate.

    Returns:
        The split. When purging would leave nothing to train on (short
        histories), nothing is purged and a warning is logged.
    """
    ordered = sorted(set(snapshots))
    n_valid = max(1, round(len(ordered) * valid_fraction))
    if len(ordered) - n_valid < 1:
        raise ValueError(f"snapshots: {len(ordered)} are too few for a temporal split")
    valid = ordered[-n_valid:]
    cutoff = valid[0] - pd.Timedelta(days=horizon_days)
    train = [s for s in ordered[:-n_valid] if s <= cutoff]
    purged = [s for s in ordered[:-n_valid] if s > cutoff]
    if not train:
        # Too little history for a gap: train on everything before validation
        # rather than not at all, and say so (metrics will be optimistic).
        log.warning(
            "propensity: no snapshot ends its %d-day horizon before validation "
            "starts at %s; training without the purge gap",
            horizon_days,
            valid[0],
        )
        train, purged = ordered[:-n_valid], []
    return TemporalSplit(train=train, valid=valid, purged=purged)


def baseline_score(frame: pd.DataFrame) -> np.ndarray:
    """Recency-frequency heuristic: mean rank of order count and purchase recency.

    The classic RF score a CRM team would use before any model: frequent and
    recent buyers first.
    """
    frequency = rankdata(frame["orders_90d"].to_numpy())
    recency = rankdata(-frame["days_since_last_purchase"].to_numpy())
    return (frequency + recency) / (2.0 * len(frame))


def lift_at(labels: np.ndarray, scores: np.ndarray, fraction: float = 0.1) -> float:
    """Purchase rate among the top ``fraction`` by score over the overall rate."""
    base = float(np.mean(labels))
    if base == 0.0 or len(labels) == 0:
        return float("nan")
    top = max(1, round(len(labels) * fraction))
    order = np.argsort(-scores, kind="stable")[:top]
    return float(np.mean(labels[order]) / base)


def ranking_metrics(
    labels: np.ndarray, scores: np.ndarray, prefix: str = ""
) -> dict[str, float]:
    """ROC-AUC, PR-AUC and top-decile lift of ``scores`` (empty with one class)."""
    if len(set(labels.tolist())) < 2:
        return {}
    return {
        f"{prefix}roc_auc": float(roc_auc_score(labels, scores)),
        f"{prefix}pr_auc": float(average_precision_score(labels, scores)),
        f"{prefix}lift_top_decile": lift_at(labels, scores),
    }


def holdout_users(user_ids: pd.Series) -> np.ndarray:
    """True for users in the scored half (a stable hash of the id, not random)."""
    hashes = user_ids.map(lambda u: zlib.crc32(str(u).encode()))
    return (hashes.to_numpy() % 2).astype(bool)


@dataclass
class LogisticBaseline:
    """Logistic regression on the same features, the model's linear rival."""

    medians: np.ndarray
    pipeline: Any

    @classmethod
    def fit(cls, matrix: np.ndarray, labels: np.ndarray) -> LogisticBaseline:
        """Fit on the training rows (missing values filled with medians)."""
        medians = np.nanmedian(matrix, axis=0)
        medians = np.where(np.isnan(medians), 0.0, medians)
        pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        pipeline.fit(_filled(matrix, medians), labels)
        return cls(medians=medians, pipeline=pipeline)

    def probability(self, matrix: np.ndarray) -> np.ndarray:
        """Purchase probability of each row."""
        return self.pipeline.predict_proba(_filled(matrix, self.medians))[:, 1]


def _filled(matrix: np.ndarray, medians: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(matrix), medians, matrix)


@dataclass
class Evaluation:
    """The holdout rows and every contender's scores on them (for reports)."""

    frame: pd.DataFrame
    labels: np.ndarray
    model: np.ndarray
    logistic: np.ndarray
    recency_frequency: np.ndarray


def fit_propensity(
    frame: pd.DataFrame,
    horizon_days: int,
    features: Sequence[str] = PROPENSITY_FEATURES,
    valid_fraction: float = 0.3,
    num_boost_round: int = 300,
    early_stopping_rounds: int = 30,
    seed: int = 0,
) -> PropensityBundle:
    """Fit, calibrate and evaluate the propensity booster.

    Args:
        frame: Training set: ``user_id``, ``event_timestamp``, ``label`` and the
            ``features`` columns (one row per user and snapshot).
        horizon_days: The label horizon, for purging the split.
        features: Model inputs, in the order serving passes them.
        valid_fraction: Share of the latest snapshots held out.
        num_boost_round: Upper bound on trees; early stopping picks the count.
        early_stopping_rounds: Patience on the validation log loss.
        seed: LightGBM seed.

    Returns:
        The bundle with its Platt calibration, population medians as defaults,
        holdout metrics of the model and of both baselines (recency-frequency
        heuristic, logistic regression), and the holdout scores (``evaluation``).
    """
    features = list(features)
    split = temporal_split(frame["event_timestamp"], horizon_days, valid_fraction)
    train = frame[frame["event_timestamp"].isin(split.train)]
    valid = frame[frame["event_timestamp"].isin(split.valid)]
    scored = holdout_users(valid["user_id"])
    tune, holdout = valid[~scored], valid[scored]
    if not (_both_classes(tune) and _both_classes(holdout)):
        log.warning(
            "propensity: too few validation users to split; tuning and scoring "
            "on the same %d rows (metrics will be optimistic)",
            len(valid),
        )
        tune = holdout = valid
    y_train = train["label"].to_numpy(dtype=np.int8)
    y_tune = tune["label"].to_numpy(dtype=np.int8)
    y_hold = holdout["label"].to_numpy(dtype=np.int8)
    if not (_both_classes(train) and _both_classes(valid)):
        raise ValueError("frame: both classes must occur in training and validation")

    params = {**PARAMS, "seed": seed, "num_threads": 0}
    x_train = train[features].to_numpy(dtype=np.float64)
    train_set = lgb.Dataset(
        x_train, label=y_train, feature_name=features, free_raw_data=False
    )
    tune_set = lgb.Dataset(
        tune[features].to_numpy(dtype=np.float64), label=y_tune, reference=train_set
    )
    booster = lgb.train(
        params,
        train_set,
        num_boost_round=num_boost_round,
        valid_sets=[tune_set],
        valid_names=["tune"],
        callbacks=[lgb.early_stopping(early_stopping_rounds, verbose=False)],
    )
    # Keep only the trees early stopping chose; serving predicts with all trees.
    booster = lgb.Booster(
        model_str=booster.model_to_string(num_iteration=booster.best_iteration)
    )
    tune_margin = booster.predict(
        tune[features].to_numpy(dtype=np.float64), raw_score=True
    )
    platt = LogisticRegression(C=1e6).fit(tune_margin.reshape(-1, 1), y_tune)
    calibration = (float(platt.coef_[0][0]), float(platt.intercept_[0]))
    bundle = PropensityBundle(
        booster=booster,
        features=features,
        defaults={
            n: float(v) for n, v in latest_per_user(frame)[features].median().items()
        },
        calibration=calibration,
    )
    x_hold = holdout[features].to_numpy(dtype=np.float64)
    margin = booster.predict(x_hold, raw_score=True)
    probability = bundle.probability(margin)
    raw_probability = 1.0 / (1.0 + np.exp(-margin))
    logistic = LogisticBaseline.fit(x_train, y_train).probability(x_hold)
    heuristic = baseline_score(holdout)
    metrics = {
        **ranking_metrics(y_hold, probability),
        "brier": float(brier_score_loss(y_hold, probability)),
        "brier_uncalibrated": float(brier_score_loss(y_hold, raw_probability)),
        **ranking_metrics(y_hold, heuristic, "baseline_"),
        **ranking_metrics(y_hold, logistic, "logistic_"),
        "logistic_brier": float(brier_score_loss(y_hold, logistic)),
        "base_rate_valid": float(y_hold.mean()),
        "base_rate_train": float(y_train.mean()),
        "best_iteration": float(booster.current_iteration()),
        "n_train": float(len(train)),
        "n_tune": float(len(tune)),
        "n_holdout": float(len(holdout)),
        "n_purged_snapshots": float(len(split.purged)),
    }
    rivals = [metrics.get("baseline_roc_auc"), metrics.get("logistic_roc_auc")]
    metrics["beats_baselines"] = float(
        all(r is not None and metrics.get("roc_auc", 0.0) > r for r in rivals)
    )
    bundle.metrics = metrics
    bundle.evaluation = Evaluation(
        frame=holdout.reset_index(drop=True),
        labels=y_hold,
        model=probability,
        logistic=logistic,
        recency_frequency=heuristic,
    )
    log.info(
        "propensity: %d trees, holdout AUC %.3f (RF %.3f, logistic %.3f), PR-AUC "
        "%.3f, Brier %.4f, top-decile lift %.2f; train %d rows / %d snapshots, "
        "tune %d, holdout %d",
        booster.current_iteration(),
        metrics.get("roc_auc", float("nan")),
        metrics.get("baseline_roc_auc", float("nan")),
        metrics.get("logistic_roc_auc", float("nan")),
        metrics.get("pr_auc", float("nan")),
        metrics["brier"],
        metrics.get("lift_top_decile", float("nan")),
        len(train),
        len(split.train),
        len(tune),
        len(holdout),
    )
    if not metrics["beats_baselines"]:
        log.warning(
            "PROPENSITY MODEL DOES NOT BEAT ITS BASELINES on the holdout: AUC %.3f "
            "vs recency-frequency %.3f and logistic regression %.3f",
            metrics.get("roc_auc", float("nan")),
            metrics.get("baseline_roc_auc", float("nan")),
            metrics.get("logistic_roc_auc", float("nan")),
        )
    return bundle


def _both_classes(frame: pd.DataFrame) -> bool:
    return frame["label"].nunique() == 2
