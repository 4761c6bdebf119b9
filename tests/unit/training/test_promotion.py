"""Champion/challenger verdicts on the same held-out rows."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd

from core.registry import PropensityBundle
from training.promotion import judge_propensity
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
        {"objective": "binary", "verbose": -1, "seed": 0},
        lgb.Dataset(train.to_numpy(), label=labels, feature_name=FEATURES),
        num_boost_round=30,
    )
    return PropensityBundle(booster=booster, features=FEATURES, defaults={}, tag=tag)


def _evaluated(bundle: PropensityBundle) -> PropensityBundle:
    frame, labels = _data(1000, 99)
    scores = bundle.probability(bundle.margin(frame[FEATURES].to_numpy()))
    bundle.evaluation = Evaluation(frame, labels, scores, scores, scores)
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
