"""Lifetime purchase facts of the user state: arrival order, duplicates, old blobs."""

from __future__ import annotations

import math
from itertools import pairwise

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.events import EventType
from core.feature_math import history_features
from core.user_state import DAY, Outcome, UserState, apply_fields
from tests.support.legacy_blobs import json_blob

T0 = 1_800_000_000.0  # 8 hours into a UTC day
DAY0 = T0 - T0 % DAY
LIFETIME_FIELDS = (
    "orders_lifetime",
    "revenue_lifetime",
    "purchase_days_lifetime",
    "first_purchase_ts",
    "purchase_gap_sum",
    "purchase_gap_sq_sum",
)


def purchase(
    state: UserState, event_id: str, ts: float, revenue: float, lateness: int
) -> Outcome:
    return apply_fields(
        state, event_id, EventType.PURCHASE, ts, None, None, None, revenue, lateness
    )


def view(state: UserState, event_id: str, ts: float, lateness: int) -> Outcome:
    return apply_fields(
        state, event_id, EventType.PAGE_VIEW, ts, None, None, None, None, lateness
    )


def lifetime(state: UserState) -> tuple[float | int | None, ...]:
    return tuple(getattr(state, name) for name in LIFETIME_FIELDS)


def fold(times: list[float], lateness: int) -> UserState:
    """Purchases of revenue 1 at ``times``, in that arrival order, ids by time."""
    state = UserState()
    for ts in times:
        assert purchase(state, f"p{ts}", ts, 1.0, lateness) is Outcome.APPLIED
    return state


@pytest.mark.parametrize(
    ("days", "arrival", "lateness_days"),
    [
        # A late purchase on a new day between two purchase days splits the gap.
        pytest.param([0, 4, 10], [0, 10, 4], 7, id="splits-a-gap"),
        # A late purchase before every other purchase day: a new first day.
        pytest.param([3, 5, 6], [5, 6, 3], 5, id="new-first-day"),
        # A late purchase on a day that already has one: no new day, no gap.
        pytest.param([2, 6, 6.5], [2, 6.5, 6], 2, id="same-day"),
        # The earlier neighbour's bucket was pruned (200 > 0 + 5 + 90 days).
        pytest.param([0, 197, 200], [0, 200, 197], 5, id="neighbour-pruned"),
    ],
)
def test_out_of_order_purchases_give_the_in_order_lifetime(
    days: list[float], arrival: list[float], lateness_days: int
) -> None:
    lateness = lateness_days * DAY
    in_order = fold([T0 + d * DAY for d in days], lateness)
    shuffled = fold([T0 + d * DAY for d in arrival], lateness)
    assert lifetime(shuffled) == lifetime(in_order)
    read_at = T0 + max(days) * DAY
    assert history_features(shuffled, read_at) == history_features(in_order, read_at)
    assert (
        shuffled.pruned_previous_purchase_day == in_order.pruned_previous_purchase_day
    )


def test_gap_statistics_over_distinct_purchase_days() -> None:
    # Days 0, 0, 4, 10 (shuffled within the lateness): gaps 4 and 6.
    state = fold([T0 + 4 * DAY, T0, T0 + 0.5 * DAY, T0 + 10 * DAY], 7 * DAY)
    assert (state.purchase_days_lifetime, state.orders_lifetime) == (3, 4.0)
    assert (state.purchase_gap_sum, state.purchase_gap_sq_sum) == (10.0, 52.0)
    f = history_features(state, T0 + 10 * DAY)
    assert f["purchase_gap_mean_days"] == 5.0
    assert f["purchase_gap_std_days"] == pytest.approx(1.0)


def test_pruning_remembers_the_latest_pruned_purchase_day() -> None:
    state = fold([T0, T0 + 3 * DAY], 600)
    view(state, "later", T0 + 200 * DAY, 600)
    first_day = int(T0 // DAY)
    assert state.pruned_purchase_day == first_day + 3
    assert not any(day < first_day + 100 for day in state.days)
    assert state.purchase_days_lifetime == 2  # the buckets went, the facts stay


def test_a_duplicate_purchase_counts_once() -> None:
    state = UserState()
    assert purchase(state, "p", T0, 5.0, 600) is Outcome.APPLIED
    assert purchase(state, "p", T0, 5.0, 600) is Outcome.DUPLICATE
    args = ("q", EventType.PURCHASE, T0 + 1, None, None, None, 5.0, 600)
    assert apply_fields(state, *args, offset=3) is Outcome.APPLIED
    # A replay by source offset, even under a new id.
    replay = ("r", *args[1:])
    assert apply_fields(state, *replay, offset=3) is Outcome.DUPLICATE
    assert (state.orders_lifetime, state.revenue_lifetime) == (2.0, 10.0)
    assert state.purchase_days_lifetime == 1


def test_lifetime_facts_survive_serialization() -> None:
    state = fold([T0, T0 + 5 * DAY, T0 + 200 * DAY], 600)
    for blob in (state.to_bytes(), state.to_bytes(with_dedupe=False)):
        decoded = UserState.from_bytes(blob)
        assert lifetime(decoded) == lifetime(state)
        assert decoded.pruned_purchase_day == state.pruned_purchase_day
        assert (
            decoded.pruned_previous_purchase_day == state.pruned_previous_purchase_day
        )


def _old_blob(state: UserState) -> bytes:
    """``state`` as stored before the lifetime facts existed."""
    raw = orjson.loads(json_blob(state))
    del raw["l"]
    return orjson.dumps(raw)


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param(
            # Everything still bucketed: exact, but the first purchase reads as
            # the first event's time on that day (the blob kept no purchase time).
            [("view", 0.25), ("buy", 0.5), ("buy", 3.5), ("buy", 10.5)],
            (3.0, 3.0, 3, T0 + 0.25 * DAY, 10.0, 58.0),
            id="all-bucketed",
        ),
        pytest.param(
            # The purchase 300 days back was pruned: only the bucketed days count.
            [("buy", 0.5), ("buy", 300.5), ("buy", 302.5)],
            (2.0, 2.0, 2, DAY0 + 300 * DAY, 2.0, 4.0),
            id="older-purchases-forgotten",
        ),
        pytest.param(
            # No purchase bucket left: the last purchase time is one known order.
            [("buy", 0.5), ("view", 200.5)],
            (1.0, 0.0, 1, T0 + 0.5 * DAY, 0.0, 0.0),
            id="only-the-last-purchase-time",
        ),
    ],
)
def test_an_old_blob_decodes_with_lifetime_derived_from_what_it_holds(
    events: list[tuple[str, float]], expected: tuple[float | int | None, ...]
) -> None:
    state = UserState()
    for i, (kind, day) in enumerate(events):
        if kind == "buy":
            purchase(state, f"e{i}", T0 + day * DAY, 1.0, 600)
        else:
            view(state, f"e{i}", T0 + day * DAY, 600)
    decoded = UserState.from_bytes(_old_blob(state))
    assert lifetime(decoded) == expected
    # From there on, new purchases add exactly as for a state that kept them.
    before = decoded.orders_lifetime
    purchase(decoded, "new", T0 + 400 * DAY, 2.0, 600)
    assert decoded.orders_lifetime == before + 1
    assert (
        history_features(decoded, T0 + 400 * DAY)["first_purchase_ts"] == (expected[3])
    )


# Purchases (and views) hours to months apart; each arrives up to the lateness
# after its time, in any order that allows, some of them twice in a row.
_TIMES = st.lists(
    st.tuples(
        st.sampled_from([0.1, 0.6, 1.0, 2.5, 40.0, 120.0]),  # days after the last
        st.booleans(),  # a purchase (else a view)
        st.floats(0.0, 0.999),  # arrival delay, in lateness units
        st.booleans(),  # sent twice
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(steps=_TIMES, lateness_days=st.sampled_from([0.01, 1, 3, 10]))
def test_any_arrival_within_the_lateness_gives_the_in_order_lifetime(
    steps: list[tuple[float, bool, float, bool]], lateness_days: float
) -> None:
    lateness = int(lateness_days * DAY)
    ts, events = T0, []
    for i, (gap, is_purchase, delay, twice) in enumerate(steps):
        ts += gap * DAY
        events.append((f"e{i}", ts, is_purchase, ts + delay * lateness, twice))
    # Arrival ordered by time plus a delay under the lateness: never late.
    arrivals = sorted(events, key=lambda e: e[3])
    in_order, shuffled = UserState(), UserState()
    for target, order in ((in_order, events), (shuffled, arrivals)):
        for event_id, at, is_purchase, _, twice in order:
            for attempt in range(2 if twice else 1):
                if is_purchase:
                    outcome = purchase(target, event_id, at, 2.0, lateness)
                else:
                    outcome = view(target, event_id, at, lateness)
                expected = Outcome.DUPLICATE if attempt else Outcome.APPLIED
                assert outcome is expected
    assert lifetime(shuffled) == lifetime(in_order)
    bought = [e for e in events if e[2]]
    assert shuffled.orders_lifetime == len(bought)
    days = sorted({math.floor(e[1]) // DAY for e in bought})
    gaps = [b - a for a, b in pairwise(days)]
    assert shuffled.purchase_days_lifetime == len(days)
    assert shuffled.purchase_gap_sum == sum(gaps)
    assert shuffled.purchase_gap_sq_sum == sum(g * g for g in gaps)
    pruned = ("pruned_purchase_day", "pruned_previous_purchase_day")
    assert [getattr(shuffled, n) for n in pruned] == [
        getattr(in_order, n) for n in pruned
    ]
    # The second-latest purchase day, whatever was pruned on the way.
    read_at = max(e[1] for e in events)
    expected = float(days[-2] * DAY) if len(days) > 1 else None
    for state in (shuffled, in_order, UserState.from_bytes(shuffled.to_bytes())):
        assert history_features(state, read_at)["previous_purchase_ts"] == expected
