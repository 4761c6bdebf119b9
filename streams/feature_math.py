"""Features from per-user state, as of a given instant: pure functions.

Window semantics, identical online and offline: a window of length W read at
instant T covers the whole event-time buckets that overlap ``[T - W, T]`` -- one-minute
buckets for ``1h``, one-hour buckets for ``24h`` and ``7d``, UTC days for ``30d`` and
``90d``. Rounding outward to whole buckets never drops an event of the window and
adds at most one bucket's worth from just before it; at a bucket boundary (the daily
training snapshots) the window is exactly ``[T - W, T]``. Buckets after T's bucket
are ignored, so "as of T" holds for replays too. Ages ("hours
since ...") are never stored: :func:`request_features` derives them at read time.
"""

from __future__ import annotations

import math

from streams.user_state import (
    _DECAY,
    ABANDON_SECONDS,
    D_ADDS,
    D_EVENTS,
    D_PURCHASES,
    D_REVENUE,
    D_SESSIONS,
    D_VIEWS,
    DAY,
    HOUR,
    MINUTE,
    S_ADDS,
    S_EVENTS,
    S_PURCHASES,
    S_REMOVES,
    S_REVENUE,
    S_VIEW_PRICE_N,
    S_VIEW_PRICE_SUM,
    S_VIEWS,
    UserState,
)

AGE_CAP_SECONDS = 90 * DAY
_COUNTED = (
    ("events", S_EVENTS),
    ("product_views", S_VIEWS),
    ("cart_adds", S_ADDS),
    ("cart_removes", S_REMOVES),
    ("purchases", S_PURCHASES),
    ("revenue", S_REVENUE),
)


def _sum_window(
    buckets: dict[int, tuple[float, ...]], low: int, high: int, size: int
) -> list[float]:
    # Column sums in C (zip + sum) rather than a Python loop per slot: this is
    # the backfill's innermost loop, once per user and snapshot.
    rows = [bucket for index, bucket in buckets.items() if low <= index <= high]
    if not rows:
        return [0.0] * size
    return [sum(column) for column in zip(*rows, strict=True)]


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


_WINDOW_KEYS = {
    window: [(f"{name}_{window}", slot) for name, slot in _COUNTED]
    for window in ("1h", "24h", "7d")
}


def stream_features(state: UserState, as_of: float) -> dict[str, float | None]:
    """The real-time feature group (see the catalogue) as of ``as_of`` (epoch s)."""
    minute, hour = int(as_of // MINUTE), int(as_of // HOUR)
    low_1h = int((as_of - HOUR) // MINUTE)
    low_24h = int((as_of - DAY) // HOUR)
    low_7d = int((as_of - 7 * DAY) // HOUR)
    size = S_VIEW_PRICE_N + 1
    windows = {
        "1h": _sum_window(state.minutes, low_1h, minute, size),
        "24h": _sum_window(state.hours, low_24h, hour, size),
        "7d": _sum_window(state.hours, low_7d, hour, size),
    }
    out: dict[str, float | None] = {}
    for window, totals in windows.items():
        for key, slot in _WINDOW_KEYS[window]:
            out[key] = totals[slot]
    sessions_1h = sessions_24h = sessions_7d = 0
    for _, ts in state.sessions.values():
        at_hour = ts // HOUR
        if low_7d <= at_hour <= hour:
            sessions_7d += 1
            if low_24h <= at_hour:
                sessions_24h += 1
                if low_1h <= ts // MINUTE <= minute:
                    sessions_1h += 1
    out["sessions_1h"] = float(sessions_1h)
    out["sessions_24h"] = float(sessions_24h)
    out["sessions_7d"] = float(sessions_7d)
    out["distinct_categories_24h"] = float(
        sum(1 for ts in state.categories.values() if low_24h <= ts // HOUR <= hour)
    )
    day_totals, week_totals = windows["24h"], windows["7d"]
    out["avg_viewed_price_24h"] = _ratio(
        day_totals[S_VIEW_PRICE_SUM], day_totals[S_VIEW_PRICE_N]
    )
    out["avg_viewed_price_7d"] = _ratio(
        week_totals[S_VIEW_PRICE_SUM], week_totals[S_VIEW_PRICE_N]
    )
    out["view_to_cart_rate_7d"] = _ratio(week_totals[S_ADDS], week_totals[S_VIEWS])
    out["cart_abandonments_24h"] = float(_abandonments(state, as_of, low_24h, hour))
    out["engagement_score"] = _engagement(state, as_of)
    out["last_event_ts"] = _not_after(state.last_event_ts, as_of)
    out["last_purchase_ts"] = _not_after(state.last_purchase_ts, as_of)
    return out


def _abandonments(state: UserState, as_of: float, low: int, high: int) -> int:
    """Cart adds in the 24h window not followed by a purchase within 30 minutes.

    Only decided cases count: an add less than 30 minutes before ``as_of`` may
    still be bought.
    """
    count = 0
    purchases = state.purchases
    for added in state.cart_adds:
        if not low <= added // HOUR <= high or added + ABANDON_SECONDS > as_of:
            continue
        if not any(added < p <= added + ABANDON_SECONDS for p in purchases):
            count += 1
    return count


def _engagement(state: UserState, as_of: float) -> float:
    ref = state.engagement_ts
    if ref is None:
        return 0.0
    if as_of <= ref:
        return state.engagement
    return state.engagement * math.exp(-_DECAY * (as_of - ref))


def history_features(state: UserState, as_of: float) -> dict[str, float | None]:
    """The 30/90-day history feature group as of ``as_of`` (epoch s)."""
    today = int(as_of // DAY)
    # Days overlapping [T - 90d, T]: the current day and the 90 before it.
    orders = revenue = orders_30 = sessions_30 = views_30 = adds_30 = 0.0
    purchase_days = purchase_days_30 = active_days_30 = 0
    for day, bucket in state.days.items():
        age = today - day
        if not 0 <= age <= 90:
            continue
        orders += bucket[D_PURCHASES]
        revenue += bucket[D_REVENUE]
        purchase_days += bucket[D_PURCHASES] > 0
        if age <= 30:
            orders_30 += bucket[D_PURCHASES]
            sessions_30 += bucket[D_SESSIONS]
            views_30 += bucket[D_VIEWS]
            adds_30 += bucket[D_ADDS]
            purchase_days_30 += bucket[D_PURCHASES] > 0
            active_days_30 += bucket[D_EVENTS] > 0
    return {
        "orders_90d": orders,
        "revenue_90d": revenue,
        "avg_order_value_90d": _ratio(revenue, orders),
        "purchase_days_90d": float(purchase_days),
        "orders_30d": orders_30,
        "sessions_30d": sessions_30,
        "product_views_30d": views_30,
        "cart_adds_30d": adds_30,
        "conversion_rate_30d": _ratio(purchase_days_30, active_days_30),
        "first_seen_ts": _not_after(state.first_seen_ts, as_of),
    }


def request_features(stored: dict[str, float | None], as_of: float) -> dict[str, float]:
    """Ages derived from stored timestamps at read time; missing means the cap."""

    def age(key: str) -> float:
        ts = stored.get(key)
        if ts is None or ts != ts:  # None or NaN: never happened
            return AGE_CAP_SECONDS
        return min(max(as_of - ts, 0.0), AGE_CAP_SECONDS)

    return {
        "hours_since_last_event": age("last_event_ts") / HOUR,
        "days_since_last_purchase": age("last_purchase_ts") / DAY,
        "tenure_days": age("first_seen_ts") / DAY,
    }


def _not_after(ts: float | None, as_of: float) -> float | None:
    # A replayed state may hold later events; "as of" must not see them.
    return ts if ts is not None and ts <= as_of else None
