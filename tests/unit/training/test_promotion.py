"""Champion/challenger verdicts on the same held-out rows."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd

from core.names import PROPENSITY_STORE_NAME, SEGMENTER_STORE_NAME
from core.registry import PropensityBundle
from segscore.models_cli import gate_result
from training.promotion import NO_BGNBD, baseline_gate, judge_propensity
from training.propensity import Evaluation

FEATURES = ["signal", "noise"]


def _data(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"signal": rng.normal(size=n), "noise": rng.normal(size=n)})
    labels = (frame["signal"] + 0.5 * rng.normal(size=n) > 0).astype(int).to_numpy()
    return frame, labels


def _bundle(tag: str, column: str, seed: int) -> PropensityBundle:
    frame, labels = _data(2000, seed)
    train = frame[FEATURES].copy()
    if column == "noise":  # a model that never saw the signal
        train["signal"] = 0.0
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "seed": 0, "num_threads": 1},
        lgb.Dataset(train.to_numpy(), label=labels, feature_name=FEATURES),
        num_boost_round=30,
    )
    return PropensityBundle(booster=booster, features=FEATURES, defaults={}, tag=tag)


def _evaluated(bundle: PropensityBundle) -> PropensityBundle:
    frame, labels = _data(1000, 99)
    scores = bundle.probability(bundle.margin(frame[FEATURES].to_numpy()))
    bundle.evaluation = Evaluation(frame, labels, scores, scores, scores)
    # Past the baseline gate: the champion comparison is what these tests judge.
    bundle.metrics = {"roc_auc": 0.9, "baseline_roc_auc": 0.5, "logistic_roc_auc": 0.5}
    return bundle


def test_a_better_challenger_is_promoted_and_a_worse_one_is_not() -> None:
    good = _evaluated(_bundle("p:good", "signal", 1))
    bad = _evaluated(_bundle("p:bad", "noise", 2))

    up = judge_propensity(good, bad)
    assert up.promoted and up.champion == "p:bad"
    assert up.challenger_score is not None and up.champion_score is not None
    assert up.challenger_score > 0.8 > up.champion_score

    down = judge_propensity(bad, good)
    assert not down.promoted and "<=" in down.reason


def test_the_first_model_and_a_changed_feature_list_are_promoted() -> None:
    good = _evaluated(_bundle("p:good", "signal", 1))
    assert judge_propensity(good, None).reason == "no champion yet"
    other = _bundle("p:other", "signal", 3)
    other.features = ["signal"]
    assert judge_propensity(good, other).reason == "features changed"


def _metrics(auc: float, **baselines: float) -> dict[str, float]:
    return {"roc_auc": auc, **{f"{k}roc_auc": v for k, v in baselines.items()}}


def test_gate_compares_with_every_baseline_present() -> None:
    gate = baseline_gate(_metrics(0.80, baseline_=0.76, logistic_=0.78, bgnbd_=0.81))
    assert not gate.passed and gate.failed_against == ["BG/NBD"]
    assert gate.summary.startswith("failed: BG/NBD (ROC-AUC 0.8000 >")
    assert "0.8000 <= BG/NBD 0.8100" in gate.summary
    without = baseline_gate(_metrics(0.80, baseline_=0.76, logistic_=0.78))
    assert without.passed and len(without.comparisons) == 2
    assert without.summary.startswith("passed") and NO_BGNBD in without.summary
    # A tie is not a win, and no metrics is no pass.
    assert not baseline_gate(_metrics(0.78, baseline_=0.78, logistic_=0.7)).passed
    assert not baseline_gate({}).passed


def test_a_first_model_failing_a_baseline_is_not_promoted_unless_forced() -> None:
    good = _evaluated(_bundle("p:good", "signal", 1))
    good.metrics = _metrics(0.80, baseline_=0.76, logistic_=0.82, bgnbd_=0.7)

    refused = judge_propensity(good, None)
    assert not refused.promoted and not refused.forced
    assert refused.gate.startswith("failed: logistic regression")
    assert "baseline gate failed" in refused.reason
    assert [(c.baseline, c.beaten) for c in refused.baselines] == [
        ("recency-frequency heuristic", True),
        ("logistic regression", False),
        ("BG/NBD", True),
    ]

    forced = judge_propensity(good, None, force=True)
    assert forced.promoted and forced.forced
    assert forced.reason.startswith("forced despite baseline gate failed")

    # Passing the gate: the first model is promoted, and records the gate.
    good.metrics = _metrics(0.80, baseline_=0.76, logistic_=0.78, bgnbd_=0.7)
    first = judge_propensity(good, None)
    assert first.promoted and first.reason == "no champion yet"
    assert first.gate.startswith("passed") and len(first.baselines) == 3


def test_a_gated_challenger_that_loses_to_the_champion_is_promoted_only_if_forced() -> (
    None
):
    good = _evaluated(_bundle("p:good", "signal", 1))
    bad = _evaluated(_bundle("p:bad", "noise", 2))
    bad.metrics = _metrics(0.9, baseline_=0.5, logistic_=0.5)
    assert not judge_propensity(bad, good).promoted
    forced = judge_propensity(bad, good, force=True)
    assert forced.promoted and forced.forced and "<= champion's" in forced.reason


def test_models_list_reads_the_gate_from_stored_metadata() -> None:
    stored = {"gate": "failed: BG/NBD (ROC-AUC 0.7000 <= BG/NBD 0.7700)"}
    assert gate_result(PROPENSITY_STORE_NAME, stored) == "failed: BG/NBD"
    # Versions stored before the gate was recorded: judged from their metrics.
    old = _metrics(0.70, baseline_=0.76, logistic_=0.6)
    assert gate_result(PROPENSITY_STORE_NAME, old) == (
        "failed: recency-frequency heuristic"
    )
    assert gate_result(PROPENSITY_STORE_NAME, {**old, "roc_auc": 0.8}) == "passed"
    assert gate_result(SEGMENTER_STORE_NAME, stored) == ""
