"""Segmenter and propensity model on simulated shoppers (no Feast: the tables the
backfill writes, joined at the snapshot instants, are what Feast returns -- the
integration test checks that equality)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from core.event_files import events_frame
from core.feature_catalog import PROPENSITY_FEATURES, SEGMENTATION_FEATURES
from segscore.simulator import simulate
from training import bgnbd
from training.backfill import BackfillResult, backfill, snapshot_grid
from training.labels import purchase_labels
from training.promotion import baseline_gate
from training.propensity import (
    baseline_score,
    bgnbd_summaries,
    cutoff_split,
    fit_propensity,
    lift_at,
    temporal_split,
)
from training.segmenter import fit_segmenter
from training.training_set import complete_features, matrix

START = 1_704_067_200.0  # 2024-01-01 00:00:00 UTC
DAYS = 30
HORIZON_DAYS = 7


@dataclass
class Simulated:
    events: pd.DataFrame
    personas: dict[str, str]
    snapshots: list[float]
    result: BackfillResult


def _model_frame(
    result: BackfillResult, entities: pd.DataFrame, features: tuple[str, ...]
) -> pd.DataFrame:
    keys = ["user_id", "event_timestamp"]
    stored = entities.merge(result.stream, on=keys, how="left").merge(
        result.history, on=keys, how="left"
    )
    model = complete_features(stored, features, stored["event_timestamp"])
    return pd.concat([entities.reset_index(drop=True), model], axis=1)


@pytest.fixture(scope="module")
def simulated() -> Simulated:
    end = START + DAYS * 86_400
    sim = simulate(1000, START, end, seed=6)
    events = events_frame(sim.events)
    snapshots = snapshot_grid(START, end)
    return Simulated(events, sim.personas, snapshots, backfill(events, snapshots, 600))


def _latest_population(simulated: Simulated) -> pd.DataFrame:
    stream = simulated.result.stream
    latest = stream["event_timestamp"] == stream["event_timestamp"].max()
    entities = stream.loc[latest, ["user_id", "event_timestamp"]]
    return _model_frame(simulated.result, entities, SEGMENTATION_FEATURES)


def test_segmenter_recovers_personas(simulated: Simulated) -> None:
    frame = _latest_population(simulated)
    bundle = fit_segmenter(frame)
    assigned = bundle.assign(matrix(frame, SEGMENTATION_FEATURES))
    ari = adjusted_rand_score(frame["user_id"].map(simulated.personas), assigned)
    # Segments must recover the personas. Measured 0.845-0.860 over seeds 1, 2,
    # 3 and 6 at 1000 users x 30 days (k = 6 each time).
    assert ari >= 0.8, f"ARI {ari:.3f}"
    assert 3 <= bundle.metrics["k"] <= 8
    assert bundle.metrics["davies_bouldin"] > 0
    names = [s.name for s in bundle.segments]
    assert len(set(names)) == len(names) == bundle.metrics["k"]
    assert "High-value frequent buyers" in names
    assert all(s.description.startswith(s.name + ": ") for s in bundle.segments)
    # Plain names: no parentheses, at most four words; descriptions all differ.
    assert not any("(" in n or len(n.split()) > 4 for n in names), names
    assert len({s.description for s in bundle.segments}) == len(names)
    assert sum(s.size for s in bundle.segments) == len(frame)
    assert bundle.defaults == {
        n: float(frame[n].median()) for n in SEGMENTATION_FEATURES
    }


def test_segment_ids_stay_stable_across_retrains(simulated: Simulated) -> None:
    frame = _latest_population(simulated)
    first = fit_segmenter(frame, seed=0)
    # A different seed permutes KMeans' cluster numbering; alignment undoes it.
    second = fit_segmenter(frame, seed=11, previous=first)
    data = matrix(frame, SEGMENTATION_FEATURES)
    agreement = np.mean(first.assign(data) == second.assign(data))
    assert agreement > 0.95
    assert [s.name for s in first.segments] == [s.name for s in second.segments]


def test_propensity_beats_recency_frequency_baseline(simulated: Simulated) -> None:
    entities = purchase_labels(
        simulated.events, simulated.snapshots, HORIZON_DAYS, START + DAYS * 86_400
    )
    frame = _model_frame(simulated.result, entities, PROPENSITY_FEATURES)
    bundle = fit_propensity(frame, HORIZON_DAYS, threads=1)
    m = bundle.metrics
    assert m["roc_auc"] > m["baseline_roc_auc"]
    assert m["pr_auc"] > m["baseline_pr_auc"]
    assert m["roc_auc"] > m["logistic_roc_auc"] > 0.5
    assert m["beats_baselines"] == 1.0
    assert m["lift_top_decile"] > 1.5
    # The holdout is the latest rows; training keeps most of the rest.
    held_from = bundle.evaluation.frame["event_timestamp"].min()
    assert held_from > frame["event_timestamp"].min()
    assert m["n_train"] >= 0.6 * len(frame)
    assert m["calibrated_mean_tune"] == pytest.approx(m["base_rate_tune"], abs=2e-3)
    assert (
        len(bundle.evaluation.labels) == m["n_holdout"] == len(bundle.evaluation.model)
    )
    base_rate = m["base_rate_valid"]
    assert m["brier"] < base_rate * (1 - base_rate)  # better than the base rate
    # Platt scaling minimises log loss, not Brier: it may cost a hair of Brier.
    assert m["brier"] <= m["brier_uncalibrated"] * 1.02
    assert 1 <= bundle.booster.current_iteration() <= 300
    # Horizons reaching past the first validation snapshot: the 6 days before it.
    assert m["n_purged_snapshots"] == HORIZON_DAYS - 1
    # Calibrated probabilities of the booster's own margin.
    probabilities = bundle.probability(bundle.margin(matrix(frame, bundle.features)))
    assert np.all((probabilities > 0) & (probabilities < 1))
    assert abs(probabilities.mean() - frame["label"].mean()) < 0.05


def test_lift_is_the_top_decile_rate_over_the_base_rate() -> None:
    labels = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0] * 10)
    perfect = labels + np.linspace(0, 0.1, len(labels))
    assert lift_at(labels, perfect) == pytest.approx(5.0)  # 100% vs 20%
    assert lift_at(labels, -perfect) == 0.0
    # No buyers: lift is undefined.
    assert math.isnan(lift_at(np.zeros(10), np.arange(10.0)))


def _days(n: int) -> list[pd.Timestamp]:
    return [pd.Timestamp(START + d * 86_400, unit="s", tz="UTC") for d in range(n)]


def test_temporal_split_purges_the_horizon_before_the_holdout() -> None:
    days = _days(60)
    split = temporal_split(days, horizon_days=7)
    assert split.holdout == days[51:]  # the latest 15 %
    assert split.purged == days[45:51]  # horizons reaching into the holdout
    assert split.tune == days[36:45] and not split.tune_by_users
    assert split.train == days[:36] and split.train_share == pytest.approx(0.6)
    assert max(split.train) + pd.Timedelta(days=7) <= min(split.holdout)
    assert max(split.tune) + pd.Timedelta(days=7) <= min(split.holdout)


def test_temporal_split_shrinks_holdout_and_tuning_before_the_purge() -> None:
    days = _days(20)
    split = temporal_split(days, horizon_days=7)
    # A 15 % holdout, a tuning slice and the gap would train on 8 of 20 days:
    # one held-out day shared by user hash keeps the gap and 13 training days.
    assert split.holdout == days[19:] and split.tune_by_users
    assert split.purged == days[13:19] and split.train == days[:13]
    # Too short for any gap: train on what precedes the holdout rather than fail.
    short = temporal_split(days[:6], horizon_days=7)
    assert short.purged == [] and len(short.train) >= 3
    with pytest.raises(ValueError, match="too few"):
        temporal_split(days[:1], horizon_days=7)


def test_split_keeps_most_rows_for_training_when_users_accumulate() -> None:
    # Rows grow with time (users keep arriving), as on a real shop: the old
    # split (latest 30 % of instants validate, then the purge) trained on about
    # a third of the rows.
    days = _days(80)
    rows = pd.Series(
        [d for i, d in enumerate(days) for _ in range(10 * (i + 1))], name="ts"
    )
    old_train = days[: 80 - 24 - 7 + 1]
    old_share = rows.isin(old_train).mean()
    assert old_share < 0.4
    split = temporal_split(rows, horizon_days=7)
    assert rows.isin(split.train).mean() >= 0.6
    assert split.train_share == pytest.approx(rows.isin(split.train).mean())
    assert split.purged and max(split.train) < min(split.purged)
    assert max(split.purged) + pd.Timedelta(days=1) == min(split.holdout)


def _bgnbd_frame(
    users: int = 2000, weeks: int = 40, horizon: int = 28, seed: int = 3
) -> pd.DataFrame:
    """Weekly snapshots of shoppers drawn from BG/NBD, arriving over time."""
    rng = np.random.default_rng(seed)
    span = weeks * 7.0
    birth = rng.uniform(0.0, span, users)
    drawn = bgnbd.sample(
        bgnbd.BgNbdParams(r=0.9, alpha=15.0, a=0.8, b=2.5),
        span - birth,
        float(horizon),
        rng,
        keep_times=True,
    )
    snapshots = np.arange(7.0, span - horizon + 1.0, 7.0)
    rows = []
    for user, (start, times) in enumerate(
        zip(birth, drawn.purchase_times, strict=True)
    ):
        when = np.floor(start + times)  # purchase days
        days = np.unique(when)
        for s in snapshots[snapshots >= days[0] + 1]:
            seen = days[days < s]
            rows.append(
                (
                    f"u{user}",
                    s,
                    float(len(seen)),
                    s - seen[0],
                    s - seen[-1],
                    float(np.sum((when < s) & (when >= s - 90))),
                    int(np.any((when >= s) & (when < s + horizon))),
                )
            )
    frame = pd.DataFrame(
        rows,
        columns=[
            "user_id",
            "day",
            "purchase_days_lifetime",
            "days_since_first_purchase",
            "days_since_last_purchase",
            "orders_90d",
            "label",
        ],
    )
    frame["event_timestamp"] = pd.to_datetime(
        START + frame.pop("day") * 86_400, unit="s", utc=True
    )
    return frame


BGNBD_FEATURES = (
    "orders_90d",
    "days_since_last_purchase",
    "purchase_days_lifetime",
    "days_since_first_purchase",
)


@pytest.fixture(scope="module")
def bgnbd_frame() -> pd.DataFrame:
    return _bgnbd_frame()


def test_bgnbd_joins_the_baselines_when_its_inputs_exist(
    bgnbd_frame: pd.DataFrame,
) -> None:
    bundle = fit_propensity(bgnbd_frame, 28, features=BGNBD_FEATURES, threads=1)
    m = bundle.metrics
    # BG/NBD is the true model of these shoppers: it ranks them well.
    assert m["bgnbd_roc_auc"] > 0.7 and m["bgnbd_roc_auc"] > m["baseline_roc_auc"]
    assert m["bgnbd_r"] == pytest.approx(0.9, rel=0.4)
    assert bundle.evaluation.bgnbd is not None
    assert len(bundle.evaluation.bgnbd) == m["n_holdout"]
    gate = baseline_gate(m)
    assert [c.baseline for c in gate.comparisons] == [
        "recency-frequency heuristic",
        "logistic regression",
        "BG/NBD",
    ]
    assert m["beats_baselines"] == float(gate.passed)
    # Training keeps most rows although users accumulate over time.
    assert m["n_train"] >= 0.6 * len(bgnbd_frame) and m["n_purged_snapshots"] >= 3
    # Platt on the tuning slice: calibrated mean = tuning purchase rate.
    assert m["calibrated_mean_tune"] == pytest.approx(m["base_rate_tune"], abs=2e-3)


def test_cutoff_split_holds_out_everyone_at_the_last_cutoff() -> None:
    days = pd.Series(_days(120))
    holdout, tune = days[112], days[105]
    split = cutoff_split(days, 7, [tune, holdout])
    assert split is not None and not split.tune_by_users
    assert split.holdout == [holdout] and split.tune == [tune]
    # Training labels end where tuning's features start; nothing later trains.
    assert split.train == list(days[:99])
    assert split.purged == [d for d in days[99:112] if d != tune]
    assert days[113] not in split.train + split.purged  # past the holdout: unused
    # Too little history before the tuning cut-off: the holdout's users are
    # shared by hash for tuning, and training reaches to one horizon before it.
    short = cutoff_split(days[:21], 7, [days[13], days[20]])
    assert short is not None and short.tune_by_users and short.tune == [days[20]]
    assert short.train == list(days[:14]) and short.purged == list(days[14:20])
    # No row at the cut-off: the caller falls back to the row-share split.
    assert cutoff_split(days[:50], 7, [days[105], days[112]]) is None


def test_fit_at_cutoffs_scores_the_whole_population_there(
    bgnbd_frame: pd.DataFrame,
) -> None:
    instants = sorted(bgnbd_frame["event_timestamp"].unique())
    holdout, tune = instants[-1], instants[-5]  # weekly rows, 28-day horizon
    bundle = fit_propensity(
        bgnbd_frame, 28, features=BGNBD_FEATURES, threads=1, cutoffs=[tune, holdout]
    )
    m = bundle.metrics
    at_holdout = bgnbd_frame[bgnbd_frame["event_timestamp"] == holdout]
    assert m["n_holdout"] == len(at_holdout) and not m["tuned_by_users"]
    assert m["n_tune"] == (bgnbd_frame["event_timestamp"] == tune).sum()
    assert m["holdout_cutoff_ts"] == pd.Timestamp(holdout).timestamp()
    assert set(bundle.evaluation.frame["user_id"]) == set(at_holdout["user_id"])
    trained = bgnbd_frame["event_timestamp"] <= tune - pd.Timedelta(days=28)
    assert m["n_train"] == trained.sum()
    assert m["roc_auc"] > 0.7


def test_without_bgnbd_inputs_the_gate_says_so(bgnbd_frame: pd.DataFrame) -> None:
    frame = bgnbd_frame.drop(
        columns=["purchase_days_lifetime", "days_since_first_purchase"]
    )
    bundle = fit_propensity(
        frame, 28, features=("orders_90d", "days_since_last_purchase"), threads=1
    )
    assert not any(k.startswith("bgnbd_") for k in bundle.metrics)
    assert bundle.evaluation.bgnbd is None
    gate = baseline_gate(bundle.metrics)
    assert len(gate.comparisons) == 2
    assert "no BG/NBD: inputs missing" in gate.summary


def test_bgnbd_summaries_follow_the_shared_definitions() -> None:
    frame = pd.DataFrame(
        {
            "purchase_days_lifetime": [0.0, 1.0, 4.0, np.nan],
            "days_since_first_purchase": [np.nan, 10.0, 100.0, np.nan],
            "days_since_last_purchase": [np.nan, 10.0, 30.0, np.nan],
        }
    )
    x, t_x, big_t, bought = bgnbd_summaries(frame)
    assert bought.tolist() == [False, True, True, False]
    assert x.tolist() == [0.0, 0.0, 3.0, 0.0]
    assert t_x.tolist() == [0.0, 0.0, 70.0, 0.0]
    assert big_t.tolist() == [0.0, 10.0, 100.0, 0.0]


def test_baseline_ranks_frequent_recent_buyers_first() -> None:
    frame = pd.DataFrame(
        {"orders_90d": [0.0, 3.0, 9.0], "days_since_last_purchase": [90.0, 20.0, 1.0]}
    )
    scores = baseline_score(frame)
    assert scores[2] > scores[1] > scores[0]
