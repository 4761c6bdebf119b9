"""The purchase-propensity model: LightGBM, temporal split, Platt calibration.

Rows are (user, snapshot) pairs. The earlier snapshots train, the later ones
validate; training snapshots whose label horizon reaches into the validation period
are dropped ("purged"), or the booster would learn from purchases that the
validation features are about to predict. The validation set drives early stopping
and the Platt calibration, and is where the model and the baseline are compared.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from streams.feature_catalog import PROPENSITY_FEATURES
from training.registry import PropensityBundle
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


def _metrics(labels: np.ndarray, scores: np.ndarray, prefix: str) -> dict[str, float]:
    if len(set(labels.tolist())) < 2:
        return {}
    return {
        f"{prefix}roc_auc": float(roc_auc_score(labels, scores)),
        f"{prefix}pr_auc": float(average_precision_score(labels, scores)),
    }


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
        and validation metrics of the model and the recency-frequency baseline.
    """
    features = list(features)
    split = temporal_split(frame["event_timestamp"], horizon_days, valid_fraction)
    train = frame[frame["event_timestamp"].isin(split.train)]
    valid = frame[frame["event_timestamp"].isin(split.valid)]
    y_train = train["label"].to_numpy(dtype=np.int8)
    y_valid = valid["label"].to_numpy(dtype=np.int8)
    if len(set(y_train.tolist())) < 2 or len(set(y_valid.tolist())) < 2:
        raise ValueError("frame: both classes must occur in training and validation")

    params = {**PARAMS, "seed": seed, "num_threads": 0}
    train_set = lgb.Dataset(
        train[features].to_numpy(dtype=np.float64),
        label=y_train,
        feature_name=features,
        free_raw_data=False,
    )
    valid_set = lgb.Dataset(
        valid[features].to_numpy(dtype=np.float64), label=y_valid, reference=train_set
    )
    booster = lgb.train(
        params,
        train_set,
        num_boost_round=num_boost_round,
        valid_sets=[valid_set],
        valid_names=["valid"],
        callbacks=[lgb.early_stopping(early_stopping_rounds, verbose=False)],
    )
    # Keep only the trees early stopping chose; serving predicts with all trees.
    booster = lgb.Booster(
        model_str=booster.model_to_string(num_iteration=booster.best_iteration)
    )
    margin = booster.predict(valid[features].to_numpy(dtype=np.float64), raw_score=True)
    platt = LogisticRegression(C=1e6).fit(margin.reshape(-1, 1), y_valid)
    calibration = (float(platt.coef_[0][0]), float(platt.intercept_[0]))
    bundle = PropensityBundle(
        booster=booster,
        features=features,
        defaults={
            n: float(v) for n, v in latest_per_user(frame)[features].median().items()
        },
        calibration=calibration,
    )
    probability = bundle.probability(margin)
    raw_probability = 1.0 / (1.0 + np.exp(-margin))
    metrics = {
        **_metrics(y_valid, probability, ""),
        "brier": float(brier_score_loss(y_valid, probability)),
        "brier_uncalibrated": float(brier_score_loss(y_valid, raw_probability)),
        **_metrics(y_valid, baseline_score(valid), "baseline_"),
        "base_rate_valid": float(y_valid.mean()),
        "base_rate_train": float(y_train.mean()),
        "best_iteration": float(booster.current_iteration()),
        "n_train": float(len(train)),
        "n_valid": float(len(valid)),
        "n_purged_snapshots": float(len(split.purged)),
    }
    bundle.metrics = metrics
    log.info(
        "propensity: %d trees, AUC %.3f (baseline %.3f), PR-AUC %.3f (baseline "
        "%.3f), Brier %.4f; train %d rows / %d snapshots, valid %d / %d",
        booster.current_iteration(),
        metrics.get("roc_auc", float("nan")),
        metrics.get("baseline_roc_auc", float("nan")),
        metrics.get("pr_auc", float("nan")),
        metrics.get("baseline_pr_auc", float("nan")),
        metrics["brier"],
        len(train),
        len(split.train),
        len(valid),
        len(split.valid),
    )
    return bundle
