"""Property: decoding a state and reading its features give what they gave before.

The reference implementations below are frozen copies of the state's JSON codec
(``UserState.to_bytes``/``_decode``) and of ``stream_values``/``history_values``
(with their helpers) as of commit 633bad7, before those were made faster. Random
event sequences (out of order, late, duplicated, over months, so that buckets are
pruned) build states with :func:`apply_fields`; every decoded field and every
feature value read at random instants must be *identical* to the reference's: the
same type, the same float to the bit (NaN where NaN), ``None`` where ``None``, and
dicts in the same order (window sums add buckets in dict order). Blobs in the old
JSON layout, with and without the lifetime facts, must decode identically too.

The reads under test are :func:`core.state_features.read_features` (numpy, many
states at once), through ``stream_values``/``history_values`` for one state and
directly over blocks of several states read in any order, as the backfill does.
"""

from __future__ import annotations

import math
from dataclasses import fields
from math import floor
from typing import Any

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.events import EventType
from core.feature_math import history_values, stream_values
from core.lifetime_from_buckets import derive_lifetime, derive_pruned_previous_day
from core.state_block import parse_blobs
from core.state_codec import offsets_of
from core.state_features import read_features
from core.user_state import (
    _DECAY,
    ABANDON_SECONDS,
    D_PURCHASES,
    D_REVENUE,
    DAY,
    HOUR,
    MINUTE,
    UserState,
    apply_fields,
)
from tests.support.legacy_blobs import json_blob

T0 = 1_800_000_000.0  # 8 hours into a UTC day
LATENESS = 3 * HOUR
TYPES = list(EventType)


# --- The reference: the JSON codec as of 633bad7 ------------------------------


# The JSON layout's writer, which stores may still hold blobs of.
ref_to_bytes = json_blob


def ref_decode(blob: bytes) -> UserState:
    raw: dict[str, Any] = orjson.loads(blob)
    first, last, last_purchase = raw["t"]
    state = UserState(
        minutes={int(r[0]): tuple(r[1:]) for r in raw["m"]},
        hours={int(r[0]): tuple(r[1:]) for r in raw["h"]},
        days={int(r[0]): tuple(r[1:]) for r in raw["d"]},
        sessions={k: (v[0], v[1]) for k, v in raw["ss"].items()},
        categories=raw["c"],
        cart_adds=tuple(raw["ca"]),
        purchases=tuple(raw["pu"]),
        engagement=raw["e"][0],
        engagement_ts=raw["e"][1],
        first_seen_ts=first,
        last_event_ts=last,
        last_purchase_ts=last_purchase,
        seen=raw["s"],
        offsets=offsets_of(raw.get("o")),
    )
    lifetime = raw.get("l")
    if lifetime is not None:
        (
            state.orders_lifetime,
            state.revenue_lifetime,
            state.purchase_days_lifetime,
            state.first_purchase_ts,
            state.purchase_gap_sum,
            state.purchase_gap_sq_sum,
            state.pruned_purchase_day,
        ) = lifetime[:7]
    if lifetime is not None and len(lifetime) > 7:
        state.pruned_previous_purchase_day = lifetime[7]
    elif lifetime is None:
        derive_lifetime(state)
    else:
        state.pruned_previous_purchase_day = derive_pruned_previous_day(state)
    return state


# --- The reference: the feature reads as of 633bad7 ---------------------------


def ref_stream_values(
    state: UserState, as_of: float, missing: float | None = None
) -> tuple[float | None, ...]:
    whole = floor(as_of)
    minute, hour = whole // MINUTE, whole // HOUR
    low_1h = floor(as_of - HOUR) // MINUTE
    low_24h = floor(as_of - DAY) // HOUR
    low_7d = floor(as_of - 7 * DAY) // HOUR
    events_1h = views_1h = adds_1h = removes_1h = purchases_1h = revenue_1h = 0.0
    for index, bucket in state.minutes.items():
        if low_1h <= index <= minute:
            events, views, adds, removes, purchases, revenue, _, _ = bucket
            events_1h += events
            views_1h += views
            adds_1h += adds
            removes_1h += removes
            purchases_1h += purchases
            revenue_1h += revenue
    events_24h = views_24h = adds_24h = removes_24h = purchases_24h = 0.0
    revenue_24h = price_sum_24h = priced_24h = 0.0
    events_7d = views_7d = adds_7d = removes_7d = purchases_7d = 0.0
    revenue_7d = price_sum_7d = priced_7d = 0.0
    for index, bucket in state.hours.items():
        if low_7d <= index <= hour:
            events, views, adds, removes, purchases, revenue, price_sum, priced = bucket
            events_7d += events
            views_7d += views
            adds_7d += adds
            removes_7d += removes
            purchases_7d += purchases
            revenue_7d += revenue
            price_sum_7d += price_sum
            priced_7d += priced
            if low_24h <= index:
                events_24h += events
                views_24h += views
                adds_24h += adds
                removes_24h += removes
                purchases_24h += purchases
                revenue_24h += revenue
                price_sum_24h += price_sum
                priced_24h += priced
    sessions_1h = sessions_24h = sessions_7d = 0
    for _, ts in state.sessions.values():
        at_hour = ts // HOUR
        if low_7d <= at_hour <= hour:
            sessions_7d += 1
            if low_24h <= at_hour:
                sessions_24h += 1
                if low_1h <= ts // MINUTE <= minute:
                    sessions_1h += 1
    categories = 0
    for ts in state.categories.values():
        if low_24h <= ts // HOUR <= hour:
            categories += 1
    abandoned = ref_abandonments(state, as_of, low_24h, hour) if state.cart_adds else 0
    last_event, last_purchase = state.last_event_ts, state.last_purchase_ts
    return (
        events_1h,
        events_24h,
        events_7d,
        views_1h,
        views_24h,
        views_7d,
        adds_1h,
        adds_24h,
        adds_7d,
        removes_1h,
        removes_24h,
        removes_7d,
        purchases_1h,
        purchases_24h,
        purchases_7d,
        revenue_1h,
        revenue_24h,
        revenue_7d,
        float(sessions_1h),
        float(sessions_24h),
        float(sessions_7d),
        float(categories),
        price_sum_24h / priced_24h if priced_24h else 0.0,
        price_sum_7d / priced_7d if priced_7d else 0.0,
        adds_7d / views_7d if views_7d else 0.0,
        float(abandoned),
        ref_engagement(state, as_of),
        last_event if last_event is not None and last_event <= as_of else missing,
        last_purchase
        if last_purchase is not None and last_purchase <= as_of
        else missing,
    )


def ref_abandonments(state: UserState, as_of: float, low: int, high: int) -> int:
    count = 0
    purchases = state.purchases
    for added in state.cart_adds:
        if not low <= added // HOUR <= high or added + ABANDON_SECONDS > as_of:
            continue
        if not any(added < p <= added + ABANDON_SECONDS for p in purchases):
            count += 1
    return count


def ref_engagement(state: UserState, as_of: float) -> float:
    ref = state.engagement_ts
    if ref is None:
        return 0.0
    if as_of <= ref:
        return state.engagement
    return state.engagement * math.exp(-_DECAY * (as_of - ref))


def ref_history_values(
    state: UserState, as_of: float, missing: float | None = None
) -> tuple[float | None, ...]:
    today = floor(as_of) // DAY
    orders = revenue = orders_30 = sessions_30 = views_30 = adds_30 = 0.0
    purchase_days = purchase_days_30 = active_days_30 = 0
    later = False
    latest_day = previous_day = -1
    for day, bucket in state.days.items():
        age = today - day
        if not 0 <= age <= 90:
            if bucket[D_PURCHASES] > 0:
                if age < 0:
                    later = True
                elif day > latest_day:
                    latest_day, previous_day = day, latest_day
                elif day > previous_day:
                    previous_day = day
            continue
        purchases, day_revenue, sessions, views, adds, events = bucket
        orders += purchases
        revenue += day_revenue
        if purchases > 0:
            purchase_days += 1
            if day > latest_day:
                latest_day, previous_day = day, latest_day
            elif day > previous_day:
                previous_day = day
        if age <= 30:
            orders_30 += purchases
            sessions_30 += sessions
            views_30 += views
            adds_30 += adds
            purchase_days_30 += purchases > 0
            active_days_30 += events > 0
    first = state.first_seen_ts
    if later:
        lifetime = ref_lifetime_before(state, today)
    else:
        lifetime = (
            state.orders_lifetime,
            state.revenue_lifetime,
            state.purchase_days_lifetime,
            state.purchase_gap_sum,
            state.purchase_gap_sq_sum,
        )
    orders_all, revenue_all, days_all, gap_sum, gap_sq_sum = lifetime
    first_purchase = state.first_purchase_ts
    if first_purchase is None or floor(first_purchase) // DAY > today:
        orders_all = revenue_all = gap_sum = gap_sq_sum = 0.0
        days_all = 0
    if first_purchase is None or first_purchase > as_of:
        first_purchase = missing
    if previous_day < 0:
        previous_day = ref_previous_pruned_purchase_day(state, today, latest_day)
    gaps = days_all - 1
    gap_mean = gap_sum / gaps if gaps > 0 else 0.0
    gap_var = gap_sq_sum / gaps - gap_mean * gap_mean if gaps > 0 else 0.0
    return (
        orders,
        revenue,
        revenue / orders if orders else 0.0,
        float(purchase_days),
        orders_30,
        sessions_30,
        views_30,
        adds_30,
        purchase_days_30 / active_days_30 if active_days_30 else 0.0,
        orders_all,
        revenue_all,
        float(days_all),
        gap_mean,
        math.sqrt(gap_var) if gap_var > 0.0 else 0.0,
        first_purchase,
        float(previous_day * DAY) if previous_day >= 0 else missing,
        first if first is not None and first <= as_of else missing,
    )


def ref_previous_pruned_purchase_day(state: UserState, today: int, latest: int) -> int:
    chain = [
        day
        for day in (state.pruned_previous_purchase_day, state.pruned_purchase_day)
        if day is not None and day <= today
    ]
    if latest >= 0:
        chain.append(latest)
    return chain[-2] if len(chain) > 1 else -1


def ref_lifetime_before(
    state: UserState, today: int
) -> tuple[float, float, int, float, float]:
    orders, revenue = state.orders_lifetime, state.revenue_lifetime
    days, gap_sum, gap_sq_sum = (
        state.purchase_days_lifetime,
        state.purchase_gap_sum,
        state.purchase_gap_sq_sum,
    )
    previous = state.pruned_purchase_day
    for day in sorted(k for k, b in state.days.items() if b[D_PURCHASES]):
        if day > today:
            bucket = state.days[day]
            orders -= bucket[D_PURCHASES]
            revenue -= bucket[D_REVENUE]
            days -= 1
            if previous is not None:
                gap = float(day - previous)
                gap_sum -= gap
                gap_sq_sum -= gap * gap
        previous = day
    return orders, revenue, days, gap_sum, gap_sq_sum


# --- Strict comparison ---------------------------------------------------------


def assert_identical(got: Any, want: Any, where: str = "") -> None:
    """Same type, same value to the bit (NaN matches NaN), dicts in the same order."""
    assert type(got) is type(want), (where, got, want)
    if isinstance(want, float):
        assert got.hex() == want.hex() or (math.isnan(got) and math.isnan(want)), (
            where,
            got,
            want,
        )
    elif isinstance(want, dict):
        assert list(got) == list(want), where
        for key, value in want.items():
            assert_identical(got[key], value, f"{where}[{key!r}]")
    elif isinstance(want, tuple | list):
        assert len(got) == len(want), (where, got, want)
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_identical(a, b, f"{where}[{i}]")
    else:
        assert got == want, (where, got, want)


def assert_same_state(got: UserState, want: UserState) -> None:
    for f in fields(UserState):
        if f.name in ("rules", "segment_outbox", "_prune_due", "recent_untrimmed"):
            continue
        assert_identical(getattr(got, f.name), getattr(want, f.name), f.name)


# --- Random states ---------------------------------------------------------------

# One event: type, seconds after the previous event's time (negative: out of
# order, possibly late), session and category (small pools, or none), price,
# revenue, and whether it repeats the previous event's id.
steps = st.tuples(
    st.sampled_from(TYPES),
    st.one_of(
        st.floats(min_value=0, max_value=120, allow_nan=False),
        st.floats(min_value=0, max_value=3 * DAY, allow_nan=False),
        st.floats(min_value=-LATENESS - HOUR, max_value=0, allow_nan=False),
        st.sampled_from([0.0, 30 * DAY, 95 * DAY, 0.5]),
    ),
    st.one_of(st.none(), st.integers(0, 6).map(lambda i: f"s{i}")),
    st.one_of(st.none(), st.sampled_from(["shoes", "books", "toys", "tea"])),
    st.one_of(st.none(), st.floats(min_value=0, max_value=500, allow_nan=False)),
    st.one_of(st.none(), st.floats(min_value=0, max_value=1500, allow_nan=False)),
    st.integers(0, 9).map(lambda i: i == 0),
)


def build(events: list[tuple[Any, ...]], start: float) -> UserState:
    state = UserState()
    ts = start
    for i, (etype, dt, session, category, price, revenue, repeat) in enumerate(events):
        ts += dt
        event_id = f"e{i - 1}" if repeat and i else f"e{i}"
        apply_fields(
            state, event_id, etype, round(ts, 3), session, category, price,
            revenue, LATENESS,
        )  # fmt: skip
    return state


states = st.builds(
    build,
    st.lists(steps, max_size=120),
    st.floats(min_value=T0 - 5 * DAY, max_value=T0 + 5 * DAY, allow_nan=False),
)
# Read instants relative to the newest event (or T0): before, at and after it,
# on bucket boundaries and far from them.
offsets = st.one_of(
    st.floats(min_value=-100 * DAY, max_value=100 * DAY, allow_nan=False),
    st.integers(-100, 100).map(lambda d: d * DAY),
    st.integers(-200, 200).map(lambda h: h * HOUR + 0.0),
    st.sampled_from([0.0, -1e-3, 1e-3, -ABANDON_SECONDS, 59.999, 3600.5]),
)
SLOW = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@SLOW
@given(states)
def test_decoded_state_is_what_the_json_decoder_gave(state: UserState) -> None:
    for with_dedupe in (True, False):
        want = ref_decode(ref_to_bytes(state, with_dedupe))
        assert_same_state(UserState.from_bytes(state.to_bytes(with_dedupe)), want)
        # Blobs the earlier code wrote still read as they did.
        assert_same_state(UserState.from_bytes(ref_to_bytes(state, with_dedupe)), want)


@SLOW
@given(states)
def test_old_blobs_without_lifetime_facts_read_as_before(state: UserState) -> None:
    raw = orjson.loads(ref_to_bytes(state, with_dedupe=False))
    without_previous = orjson.dumps({**raw, "l": raw["l"][:7]})
    del raw["l"]
    for blob in (orjson.dumps(raw), without_previous):
        assert_same_state(UserState.from_bytes(blob), ref_decode(blob))


@SLOW
@given(states, st.lists(offsets, min_size=1, max_size=8))
def test_reads_are_what_they_were(state: UserState, deltas: list[float]) -> None:
    newest = state.last_event_ts if state.last_event_ts is not None else T0
    decoded = UserState.from_bytes(state.to_bytes(with_dedupe=False))
    for delta in deltas:
        at = newest + delta
        for missing in (None, math.nan):
            want_stream = ref_stream_values(state, at, missing)
            want_history = ref_history_values(state, at, missing)
            for read in (state, decoded):
                assert_identical(stream_values(read, at, missing), want_stream)
                assert_identical(history_values(read, at, missing), want_history)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(TYPES),
            st.integers(-200, 200),
            st.sampled_from([-1, 0, 1]),
            st.booleans(),
        ),
        min_size=1,
        max_size=30,
    ),
    st.integers(-200, 200),
    st.sampled_from([-1, 0, 1]),
)
def test_times_on_bucket_edges_read_as_before(
    events: list[tuple[EventType, int, int, bool]], hours: int, nudge: int
) -> None:
    """Times at, or one ulp either side of, hour and minute edges.

    Where a time is compared with a window's edge instead of floored into its
    bucket, the two must agree exactly there.
    """
    base = floor(T0 / HOUR) * HOUR
    state = UserState()
    for i, (etype, hour, side, in_minute) in enumerate(events):
        # Event times are floats (as validated events give them); reads return floats.
        edge = float(base + hour * HOUR + (MINUTE * 7 if in_minute else 0))
        ts = edge if side == 0 else math.nextafter(edge, math.inf * side)
        apply_fields(
            state, f"e{i}", etype, ts, f"s{i % 3}", "tea", 1.5, 2.5, 400 * HOUR
        )
    at = base + hours * HOUR
    at = at if nudge == 0 else math.nextafter(at, math.inf * nudge)
    for missing in (None, math.nan):
        assert_identical(
            stream_values(state, at, missing), ref_stream_values(state, at, missing)
        )
        assert_identical(
            history_values(state, at, missing), ref_history_values(state, at, missing)
        )


@SLOW
@given(
    st.lists(states, min_size=1, max_size=6),
    st.lists(st.tuples(st.integers(0, 5), offsets), min_size=1, max_size=12),
)
def test_many_states_read_at_once_read_as_each_alone(
    many: list[UserState], reads: list[tuple[int, float]]
) -> None:
    """One block, rows reading its states in any order and repeatedly, each at
    its own instant (as the backfill reads a chunk): each row is that state's
    reference values."""
    block = parse_blobs([s.to_bytes(with_dedupe=False) for s in many])
    picks = [(i % len(many), delta) for i, delta in reads]
    instants = []
    for i, delta in picks:
        newest = many[i].last_event_ts
        instants.append((newest if newest is not None else T0) + delta)
    stream, history = read_features(
        block, np.array(instants), np.array([i for i, _ in picks], dtype=np.int64)
    )
    for row, ((i, _), at) in enumerate(zip(picks, instants, strict=True)):
        assert_identical(
            tuple(stream[row].tolist()), ref_stream_values(many[i], at, math.nan)
        )
        assert_identical(
            tuple(history[row].tolist()), ref_history_values(many[i], at, math.nan)
        )
