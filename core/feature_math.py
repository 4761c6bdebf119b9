"""Features from per-user state, as of a given instant: pure functions.

Window semantics, identical online and offline: a window of length W read at
instant T covers the whole event-time buckets that overlap ``[T - W, T]`` -- one-minute
buckets for ``1h``, one-hour buckets for ``24h`` and ``7d``, UTC days for ``30d`` and
``90d``. Rounding outward to whole buckets never drops an event of the window and
adds at most one bucket's worth from just before it; at a bucket boundary (the daily
training snapshots) the window is exactly ``[T - W, T]``. Buckets after T's bucket
are ignored, so "as of T" holds for replays too. Lifetime purchase facts are
kept as running totals in the state; a read before some of its purchase buckets
takes those buckets back out (exact while they are bucketed, i.e. for reads
within 90 days of the newest event). Ages ("hours since ...") are never stored:
:func:`request_features` derives them at read time, uncapped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from math import floor
from typing import Any

import numpy as np

from core.feature_catalog import STREAM_NAMES
from core.user_state import (
    _DECAY,
    ABANDON_SECONDS,
    D_PURCHASES,
    D_REVENUE,
    DAY,
    HOUR,
    MINUTE,
    UserState,
)

# Both feature groups in catalogue order: the tuples of :func:`stream_values` and
# :func:`history_values` hold their values in exactly this order.


def stream_values(
    state: UserState, as_of: float, missing: float | None = None
) -> tuple[float | None, ...]:
    """The real-time feature group as of ``as_of`` (epoch s), in ``STREAM_NAMES`` order.

    The one implementation of the group: :func:`stream_features` names these values,
    the backfill writes them as a snapshot row. ``missing`` stands for a timestamp
    that is unknown as of ``as_of`` (``None`` online, NaN in snapshot tables).
    """
    # ``floor(x) // n`` is ``int(x // n)`` for any epoch time, at half the cost.
    whole = floor(as_of)
    minute, hour = whole // MINUTE, whole // HOUR
    low_1h = floor(as_of - HOUR) // MINUTE
    low_24h = floor(as_of - DAY) // HOUR
    low_7d = floor(as_of - 7 * DAY) // HOUR
    # Slot-wise window totals: buckets added in dict order, from 0.0, one slot at
    # a time -- what ``sum`` over each slot gave, to the bit -- but into local
    # floats, three times faster than building a tuple per bucket: this is the
    # backfill's innermost loop, once per user and snapshot. Buckets unpack in
    # slot order (S_EVENTS .. S_VIEW_PRICE_N). The 24h window lies inside the 7d
    # one, so one pass over the hours serves both.
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
    # Times are compared with the windows' edges in seconds rather than floored
    # into buckets: ``low <= ts // n <= high`` is ``low * n <= ts < (high + 1) * n``
    # for any time (float floor division is exact), at a third of the cost. The
    # edges are floats, exact below 2**53: float-float comparisons are cheapest.
    start_1h, end_1h = float(low_1h * MINUTE), float((minute + 1) * MINUTE)
    start_24h, start_7d = float(low_24h * HOUR), float(low_7d * HOUR)
    end_hour = float((hour + 1) * HOUR)
    # Counted as floats, as they are returned (exact far beyond any count).
    sessions_1h = sessions_24h = sessions_7d = 0.0
    for _, ts in state.sessions.values():
        # The 1h window lies inside the 24h one, which lies inside the 7d one.
        if start_7d <= ts < end_hour:
            sessions_7d += 1.0
            if start_24h <= ts:
                sessions_24h += 1.0
                if start_1h <= ts < end_1h:
                    sessions_1h += 1.0
    categories = 0.0
    for ts in state.categories.values():
        if start_24h <= ts < end_hour:
            categories += 1.0
    abandoned = (
        _abandonments(state, as_of, start_24h, end_hour) if state.cart_adds else 0
    )
    last_event, last_purchase = state.last_event_ts, state.last_purchase_ts
    # One tuple display, in catalogue order (checked against the catalogue by the
    # unit tests); the ratios read 0 without a denominator.
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
        sessions_1h,
        sessions_24h,
        sessions_7d,
        categories,
        price_sum_24h / priced_24h if priced_24h else 0.0,
        price_sum_7d / priced_7d if priced_7d else 0.0,
        adds_7d / views_7d if views_7d else 0.0,
        float(abandoned),
        _engagement(state, as_of),
        # A replayed state may hold later events; "as of" must not see them.
        last_event if last_event is not None and last_event <= as_of else missing,
        last_purchase
        if last_purchase is not None and last_purchase <= as_of
        else missing,
    )


def stream_features(state: UserState, as_of: float) -> dict[str, float | None]:
    """The real-time feature group (see the catalogue) as of ``as_of`` (epoch s)."""
    return dict(zip(STREAM_NAMES, stream_values(state, as_of), strict=True))


def _abandonments(state: UserState, as_of: float, start: float, end: float) -> int:
    """Cart adds in the 24h window not followed by a purchase within 30 minutes.

    The window's hour buckets span ``[start, end)`` seconds. Only decided cases
    count: an add less than 30 minutes before ``as_of`` may still be bought.
    """
    count = 0
    purchases = state.purchases
    for added in state.cart_adds:
        if not start <= added < end or added + ABANDON_SECONDS > as_of:
            continue
        # A loop, not any() over a generator: most users have no purchase to
        # scan, and a generator costs more than the few comparisons.
        until = added + ABANDON_SECONDS
        for bought in purchases:
            if added < bought <= until:
                break
        else:
            count += 1
    return count


def _engagement(state: UserState, as_of: float) -> float:
    ref = state.engagement_ts
    if ref is None:
        return 0.0
    if as_of <= ref:
        return state.engagement
    return state.engagement * math.exp(-_DECAY * (as_of - ref))


def history_values(
    state: UserState, as_of: float, missing: float | None = None
) -> tuple[float | None, ...]:
    """The history group as of ``as_of`` (epoch s), in ``HISTORY_NAMES`` order.

    The one implementation of the group, like :func:`stream_values`; ``missing``
    stands for a timestamp unknown as of ``as_of`` (``first_purchase_ts`` of a
    user who never purchased, ``previous_purchase_ts`` of one with fewer than
    two purchase days, ``first_seen_ts`` of one never seen).
    """
    today = floor(as_of) // DAY
    # Days overlapping [T - 90d, T]: the current day and the 90 before it.
    orders = revenue = orders_30 = sessions_30 = views_30 = adds_30 = 0.0
    purchase_days = purchase_days_30 = active_days_30 = 0
    later = False
    # The two latest bucketed purchase days by the read's day (-1: none).
    latest_day = previous_day = -1
    # Day indexes compared with the windows' first days, not ages: ``0 <= today -
    # day <= 90`` without a subtraction per bucket.
    first_90, first_30 = today - 90, today - 30
    for day, bucket in state.days.items():
        if not first_90 <= day <= today:
            if bucket[D_PURCHASES] > 0:
                if day > today:
                    later = True
                elif day > latest_day:
                    latest_day, previous_day = day, latest_day
                elif day > previous_day:
                    previous_day = day
            continue
        # One unpack (slot order, D_PURCHASES .. D_EVENTS) instead of six lookups.
        purchases, day_revenue, sessions, views, adds, events = bucket
        orders += purchases
        revenue += day_revenue
        # Day counts as int increments under a test, not ``n += x > 0``: adding a
        # bool to an int misses the interpreter's int fast path.
        if purchases > 0:
            purchase_days += 1
            if day >= first_30:
                purchase_days_30 += 1
            if day > latest_day:
                latest_day, previous_day = day, latest_day
            elif day > previous_day:
                previous_day = day
        if day >= first_30:
            orders_30 += purchases
            sessions_30 += sessions
            views_30 += views
            adds_30 += adds
            if events > 0:
                active_days_30 += 1
    first = state.first_seen_ts
    if later:
        lifetime = _lifetime_before(state, today)
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
        # Nothing bought by the read's day, whatever later purchases the state
        # holds (the read's own day counts whole, as in the windows).
        orders_all = revenue_all = gap_sum = gap_sq_sum = 0.0
        days_all = 0
    if first_purchase is None or first_purchase > as_of:
        first_purchase = missing
    # Without a pruned purchase day the chain has at most the one bucketed day.
    if previous_day < 0 and (
        state.pruned_purchase_day is not None
        or state.pruned_previous_purchase_day is not None
    ):
        previous_day = _previous_pruned_purchase_day(state, today, latest_day)
    gaps = days_all - 1
    gap_mean = gap_sum / gaps if gaps > 0 else 0.0
    # Population variance from the sums; rounding can make it a hair negative.
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


def _previous_pruned_purchase_day(state: UserState, today: int, latest: int) -> int:
    """The second-latest purchase day by ``today`` when at most one is bucketed.

    The purchase days known as of ``today`` chain as ``[pruned previous, pruned,
    *bucketed ones up to today]``, since every pruned day precedes every bucket
    (see :class:`UserState`); ``latest`` is the one bucketed day, or -1. Exact
    for reads within 90 days of the newest event, like the other lifetime facts;
    a read before a pruned purchase day leaves it out.

    Returns:
        A UTC day index, or -1 with fewer than two purchase days.
    """
    chain = [
        day
        for day in (state.pruned_previous_purchase_day, state.pruned_purchase_day)
        if day is not None and day <= today
    ]
    if latest >= 0:
        chain.append(latest)
    return chain[-2] if len(chain) > 1 else -1


def _lifetime_before(
    state: UserState, today: int
) -> tuple[float, float, int, float, float]:
    """The lifetime purchase totals without the purchase buckets after ``today``.

    For reads of a state that already holds later events (the windows ignore
    such buckets too): each later purchase day takes back its orders, its
    revenue and the gap that led to it (purchase days chain from the latest
    pruned one through the bucketed ones in day order).
    """
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


def history_features(state: UserState, as_of: float) -> dict[str, float | None]:
    """The history feature group (30/90-day and lifetime) as of ``as_of`` (epoch s)."""
    # A dict display: twice as fast as dict(zip(HISTORY_NAMES, ...)) at this size.
    # The names are HISTORY_NAMES in order (a unit test holds them to it).
    (
        orders_90d,
        revenue_90d,
        avg_order_value_90d,
        purchase_days_90d,
        orders_30d,
        sessions_30d,
        product_views_30d,
        cart_adds_30d,
        conversion_rate_30d,
        orders_lifetime,
        revenue_lifetime,
        purchase_days_lifetime,
        purchase_gap_mean_days,
        purchase_gap_std_days,
        first_purchase_ts,
        previous_purchase_ts,
        first_seen_ts,
    ) = history_values(state, as_of)
    return {
        "orders_90d": orders_90d,
        "revenue_90d": revenue_90d,
        "avg_order_value_90d": avg_order_value_90d,
        "purchase_days_90d": purchase_days_90d,
        "orders_30d": orders_30d,
        "sessions_30d": sessions_30d,
        "product_views_30d": product_views_30d,
        "cart_adds_30d": cart_adds_30d,
        "conversion_rate_30d": conversion_rate_30d,
        "orders_lifetime": orders_lifetime,
        "revenue_lifetime": revenue_lifetime,
        "purchase_days_lifetime": purchase_days_lifetime,
        "purchase_gap_mean_days": purchase_gap_mean_days,
        "purchase_gap_std_days": purchase_gap_std_days,
        "first_purchase_ts": first_purchase_ts,
        "previous_purchase_ts": previous_purchase_ts,
        "first_seen_ts": first_seen_ts,
    }


def request_features(
    stored: Mapping[str, Any], as_of: float | np.ndarray
) -> dict[str, Any]:
    """Ages derived from stored timestamps at read time, uncapped and always finite.

    One user (floats, ``None`` for never) gives floats; many at once (arrays,
    NaN for never, ``as_of`` a scalar or one instant per row) gives arrays --
    the same arithmetic, so training sets and scoring cannot disagree.

    An age whose event never happened falls back so that it reads "not in the
    whole known life": never purchased gives ``days_since_first_purchase`` =
    ``days_since_last_purchase`` = ``tenure_days`` (with ``orders_lifetime`` 0);
    a first purchase unknown but a last one known gives the last one's age.
    Fewer than two purchase days (no ``previous_purchase_ts``) likewise gives
    ``days_since_previous_purchase`` = ``tenure_days``.
    No ``last_event_ts`` likewise reads as the tenure (in hours). Never seen (no
    ``first_seen_ts`` either) gives 0 for every age: a cold start, which scoring
    gives population defaults anyway. A timestamp after the read (a
    state read before its latest event) gives 0. A key absent from ``stored``
    counts as never.

    Args:
        stored: Timestamp name to epoch seconds (``REQUEST_SOURCES`` names).
        as_of: Read instant(s), epoch seconds.

    Returns:
        ``hours_since_last_event``, ``tenure_days``, ``days_since_first_purchase``,
        ``days_since_last_purchase`` and ``days_since_previous_purchase``: floats
        for one user, else arrays of the broadcast shape of the inputs.
    """
    values = {
        key: np.asarray(
            np.nan if stored.get(key) is None else stored[key], dtype=np.float64
        )
        for key in AGE_SOURCES
    }
    instant = np.asarray(as_of, dtype=np.float64)
    shape = np.broadcast_shapes(instant.shape, *(v.shape for v in values.values()))

    def age(key: str) -> np.ndarray:
        # NaN where the event never happened; clipped at 0 for one after the read.
        return np.maximum(instant - values[key], 0.0)

    tenure = age("first_seen_ts")
    tenure = np.where(np.isnan(tenure), 0.0, tenure)
    last_purchase = age("last_purchase_ts")
    first_purchase = age("first_purchase_ts")
    first_purchase = np.where(np.isnan(first_purchase), last_purchase, first_purchase)
    first_purchase = np.where(np.isnan(first_purchase), tenure, first_purchase)
    last_purchase = np.where(np.isnan(last_purchase), first_purchase, last_purchase)
    previous_purchase = age("previous_purchase_ts")
    previous_purchase = np.where(np.isnan(previous_purchase), tenure, previous_purchase)
    last_event = age("last_event_ts")
    last_event = np.where(np.isnan(last_event), tenure, last_event)
    ages = {
        "hours_since_last_event": last_event / HOUR,
        "days_since_last_purchase": last_purchase / DAY,
        "tenure_days": tenure / DAY,
        "days_since_first_purchase": first_purchase / DAY,
        "days_since_previous_purchase": previous_purchase / DAY,
    }
    if not shape:
        return {name: float(value) for name, value in ages.items()}
    return {
        name: value if value.shape == shape else np.broadcast_to(value, shape).copy()
        for name, value in ages.items()
    }


# The state timestamps the request-time features are ages of.
AGE_SOURCES = (
    "last_event_ts",
    "last_purchase_ts",
    "first_seen_ts",
    "first_purchase_ts",
    "previous_purchase_ts",
)
