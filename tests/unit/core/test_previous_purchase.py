"""The second-latest purchase day: state, history read, stored blobs and its age."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from core.events import EventType
from core.feature_catalog import (
    CATALOGUE,
    HISTORY_NAMES,
    PROPENSITY_FEATURES,
    REQUEST_SOURCES,
    TIMESTAMP_FEATURES,
    Group,
)
from core.feature_math import (
    history_features,
    history_values,
    request_features,
    stream_features,
)
from core.user_state import DAY, Outcome, UserState, apply_fields
from tests.support.legacy_blobs import json_blob

T0 = 1_800_000_000.0  # 8 hours into a UTC day
DAY0 = T0 - T0 % DAY  # 00:00 UTC of T0's day
PREVIOUS = HISTORY_NAMES.index("previous_purchase_ts")


def purchase(state: UserState, ts: float, lateness: int) -> None:
    outcome = apply_fields(
        state, f"p{ts}", EventType.PURCHASE, ts, None, None, None, 1.0, lateness
    )
    assert outcome is Outcome.APPLIED


def view(state: UserState, ts: float, lateness: int) -> None:
    outcome = apply_fields(
        state, f"v{ts}", EventType.PAGE_VIEW, ts, None, None, None, None, lateness
    )
    assert outcome is Outcome.APPLIED


def fold(days: list[float], lateness: int) -> UserState:
    """Purchases at ``T0 + d`` days, in that arrival order."""
    state = UserState()
    for d in days:
        purchase(state, T0 + d * DAY, lateness)
    return state


def previous(state: UserState, at: float) -> float | None:
    return history_features(state, at)["previous_purchase_ts"]


@pytest.mark.parametrize(
    ("days", "arrival", "lateness_days", "previous_day"),
    [
        pytest.param([0, 4, 10], [0, 10, 4], 7, 4, id="late-day-between-two"),
        pytest.param([3, 5, 6], [5, 6, 3], 5, 5, id="late-new-first-day"),
        # 6.5 days after T0 is still day 6: two purchases, one purchase day.
        pytest.param([2, 6, 6.5], [2, 6.5, 6], 2, 2, id="late-on-the-latest-day"),
        pytest.param([0, 10, 10.2], [0, 10.2, 10], 1, 0, id="same-day-out-of-order"),
        # Day 0's bucket is pruned when day 200 arrives, before day 197 does.
        pytest.param([0, 197, 200], [0, 200, 197], 5, 197, id="neighbour-pruned"),
        pytest.param([0, 100, 103], [0, 103, 100], 5, 100, id="late-after-pruning"),
    ],
)
def test_previous_purchase_day_does_not_depend_on_arrival_order(
    days: list[float], arrival: list[float], lateness_days: int, previous_day: int
) -> None:
    lateness = lateness_days * DAY
    in_order, shuffled = fold(days, lateness), fold(arrival, lateness)
    read_at = T0 + max(days) * DAY
    expected = DAY0 + previous_day * DAY
    assert previous(in_order, read_at) == previous(shuffled, read_at) == expected
    pruned = ("pruned_purchase_day", "pruned_previous_purchase_day")
    assert [getattr(shuffled, n) for n in pruned] == [
        getattr(in_order, n) for n in pruned
    ]


def test_previous_purchase_is_found_after_its_buckets_are_pruned() -> None:
    last = T0 + 300 * DAY
    state = fold([100, 200, 300], 600)
    first_day = int(DAY0 // DAY)
    # 100 and 200 days before the last purchase: both buckets are gone.
    assert not any(day < first_day + 300 for day in state.days)
    assert state.pruned_purchase_day == first_day + 200
    assert state.pruned_previous_purchase_day == first_day + 100
    assert previous(state, last) == DAY0 + 200 * DAY
    # No purchase bucket left at all: the chain is the two pruned days.
    view(state, last + 200 * DAY, 600)
    assert not any(b[0] for b in state.days.values())
    assert state.pruned_previous_purchase_day == first_day + 200
    at = last + 200 * DAY
    assert previous(state, at) == DAY0 + 200 * DAY
    stored = {**stream_features(state, at), **history_features(state, at)}
    ages = request_features(stored, at)
    assert ages["days_since_previous_purchase"] == pytest.approx(
        (at - (DAY0 + 200 * DAY)) / DAY
    )
    assert ages["days_since_last_purchase"] == pytest.approx(200.0)


def test_a_read_before_later_purchase_days_leaves_them_out() -> None:
    state = fold([0, 5, 9], 600)
    assert previous(state, T0 + 9 * DAY) == DAY0 + 5 * DAY
    assert previous(state, T0 + 7 * DAY) == DAY0
    # The read's own day counts whole, as for the lifetime purchase days.
    early_day5 = DAY0 + 5 * DAY + 60
    assert previous(state, early_day5) == DAY0
    assert history_features(state, early_day5)["purchase_days_lifetime"] == 2.0
    # One purchase day by the read: no previous one.
    assert previous(state, T0 + 4 * DAY) is None
    assert math.isnan(history_values(state, T0 + 4 * DAY, math.nan)[PREVIOUS])
    assert previous(state, T0 - DAY) is None


def test_a_read_before_later_purchases_with_pruned_days() -> None:
    # Day 0 is pruned by day 100; a read on day 101 sees days 0 and 100 only.
    state = fold([0, 100, 103], 600)
    assert state.pruned_purchase_day == int(DAY0 // DAY)
    assert previous(state, T0 + 101 * DAY) == DAY0
    assert previous(state, T0 + 103 * DAY) == DAY0 + 100 * DAY


def test_a_read_before_a_pruned_purchase_day_leaves_it_out() -> None:
    # Days 0 and 100 are both pruned by day 200.
    state = fold([0, 100, 200], 600)
    assert state.pruned_previous_purchase_day == int(DAY0 // DAY)
    assert previous(state, T0 + 150 * DAY) == DAY0
    assert previous(state, T0 + 50 * DAY) is None


def test_the_history_tuple_holds_previous_purchase_ts_in_catalogue_order() -> None:
    state = fold([0, 3], 600)
    values = history_values(state, T0 + 3 * DAY)
    assert values[PREVIOUS] == DAY0
    assert history_features(state, T0 + 3 * DAY)["previous_purchase_ts"] == DAY0


def _blob_without_previous(state: UserState) -> bytes:
    """``state`` as stored with seven lifetime facts, before the previous day."""
    raw = orjson.loads(json_blob(state))
    assert len(raw["l"]) == 8
    raw["l"] = raw["l"][:7]
    return orjson.dumps(raw)


def test_the_pruned_days_survive_serialization() -> None:
    state = fold([0, 100, 200, 300], 600)
    assert state.pruned_previous_purchase_day is not None
    for blob in (state.to_bytes(), state.to_bytes(with_dedupe=False)):
        decoded = UserState.from_bytes(blob)
        assert decoded.pruned_purchase_day == state.pruned_purchase_day
        assert (
            decoded.pruned_previous_purchase_day == state.pruned_previous_purchase_day
        )
        at = T0 + 300 * DAY
        assert history_features(decoded, at) == history_features(state, at)


@pytest.mark.parametrize(
    ("days", "derived"),
    [
        # Two pruned purchase days: the earlier one is the first purchase day.
        pytest.param([0, 100, 200], 0, id="two-pruned-is-the-first-day"),
        # One pruned purchase day: there is no earlier one.
        pytest.param([0, 100], None, id="one-pruned-has-none-before"),
        # Three pruned: which one came before the latest is not in the blob.
        pytest.param([0, 100, 200, 300], None, id="three-pruned-is-unknown"),
        pytest.param([0, 5], None, id="nothing-pruned"),
    ],
)
def test_a_blob_without_the_previous_pruned_day_derives_what_it_can(
    days: list[float], derived: int | None
) -> None:
    state = fold(days, 600)
    decoded = UserState.from_bytes(_blob_without_previous(state))
    expected = None if derived is None else int(DAY0 // DAY) + derived
    assert decoded.pruned_previous_purchase_day == expected
    assert decoded.pruned_purchase_day == state.pruned_purchase_day
    assert decoded.purchase_days_lifetime == state.purchase_days_lifetime
    # The latest purchase day is still bucketed: every read from it is exact.
    at = T0 + max(days) * DAY
    assert previous(decoded, at) == previous(state, at)


def test_an_unknown_previous_pruned_day_is_learnt_at_the_next_pruning() -> None:
    state = fold([0, 100, 200, 300], 600)
    decoded = UserState.from_bytes(_blob_without_previous(state))
    assert decoded.pruned_previous_purchase_day is None
    # The day-300 bucket still holds the latest purchase: the read is exact.
    at = T0 + 300 * DAY
    assert previous(decoded, at) == previous(state, at) == DAY0 + 200 * DAY
    # Once day 300 is pruned too, day 200 becomes the previous pruned day.
    for target in (decoded, state):
        view(target, T0 + 400 * DAY, 600)
    assert decoded.pruned_previous_purchase_day == int(DAY0 // DAY) + 200
    assert previous(decoded, T0 + 400 * DAY) == DAY0 + 200 * DAY


def test_a_blob_without_any_lifetime_facts_knows_no_previous_pruned_day() -> None:
    state = fold([0, 100, 200], 600)
    raw = orjson.loads(json_blob(state))
    del raw["l"]
    decoded = UserState.from_bytes(orjson.dumps(raw))
    assert decoded.pruned_previous_purchase_day is None
    assert decoded.pruned_purchase_day is None  # day 200 is still bucketed
    assert previous(decoded, T0 + 200 * DAY) is None


@pytest.mark.parametrize(
    "days",
    [
        pytest.param([], id="never-purchased"),
        pytest.param([0], id="one-purchase-day"),
        pytest.param([0, 0.5], id="two-orders-on-one-day"),
    ],
)
def test_fewer_than_two_purchase_days_read_as_the_tenure(days: list[float]) -> None:
    state = UserState()
    view(state, T0 - 30 * DAY, 600)
    for d in days:
        purchase(state, T0 + d * DAY, 600)
    at = T0 + DAY
    stored = {**stream_features(state, at), **history_features(state, at)}
    assert stored["previous_purchase_ts"] is None
    ages = request_features(stored, at)
    assert ages["tenure_days"] == pytest.approx(31.0)
    assert ages["days_since_previous_purchase"] == ages["tenure_days"]
    timestamps = {k: v for k, v in stored.items() if k in TIMESTAMP_FEATURES}
    column = request_features(
        {
            k: np.array([math.nan if v is None else v, math.nan])
            for k, v in timestamps.items()
        },
        np.array([at, at]),
    )
    assert column["days_since_previous_purchase"].tolist() == [
        ages["tenure_days"],
        0.0,  # never seen
    ]


def test_the_age_is_a_propensity_input_read_from_stored_timestamps() -> None:
    assert PROPENSITY_FEATURES[-1] == "days_since_previous_purchase"
    spec = CATALOGUE["days_since_previous_purchase"]
    assert spec.group is Group.REQUEST
    assert REQUEST_SOURCES[spec.name] == ("previous_purchase_ts", "first_seen_ts")
    assert CATALOGUE["previous_purchase_ts"].group is Group.HISTORY
    # Training sets pass only TIMESTAMP_FEATURES to request_features: every
    # source of every age must be one, or training would read the fallback.
    for sources in REQUEST_SOURCES.values():
        assert set(sources) <= TIMESTAMP_FEATURES
