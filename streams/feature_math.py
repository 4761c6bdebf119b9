"""Features from per-user state, as of a given instant: pure functions.

Window semantics: a window of length W read at instant T covers the one-minute
buckets (or one-day buckets for the 90-day history) whose index lies in
``(index(T) - W, index(T)]``, i.e. the current bucket and the W-1 before it.
Buckets after T are ignored, so "as of T" is exact for replays too.
"""

from __future__ import annotations

from streams.events import EventType
from streams.user_state import DAY, EVENT_SLOTS, MINUTE, REVENUE_SLOT, UserState

HOUR_MINUTES = 60
DAY_MINUTES = 24 * 60
WEEK_MINUTES = 7 * DAY_MINUTES
HISTORY_DAYS = 90
AGE_CAP_SECONDS = 90 * DAY

_VIEW = EVENT_SLOTS[EventType.PRODUCT_VIEW]
_ADD = EVENT_SLOTS[EventType.ADD_TO_CART]
_REMOVE = EVENT_SLOTS[EventType.REMOVE_FROM_CART]
_PURCHASE = EVENT_SLOTS[EventType.PURCHASE]
_EVENT_SLOTS = tuple(EVENT_SLOTS.values())


def stream_features(state: UserState, as_of: float) -> dict[str, float | None]:
    """The stream feature group (see the catalogue) as of ``as_of`` (epoch s)."""
    now_minute = int(as_of // MINUTE)
    events_1h = events_24h = events_7d = 0.0
    views_24h = adds_24h = removes_24h = purchases_7d = revenue_7d = 0.0
    for minute, bucket in state.minutes.items():
        age = now_minute - minute
        if age < 0 or age >= WEEK_MINUTES:
            continue
        total = sum(bucket[i] for i in _EVENT_SLOTS)
        events_7d += total
        purchases_7d += bucket[_PURCHASE]
        revenue_7d += bucket[REVENUE_SLOT]
        if age < DAY_MINUTES:
            events_24h += total
            views_24h += bucket[_VIEW]
            adds_24h += bucket[_ADD]
            removes_24h += bucket[_REMOVE]
            if age < HOUR_MINUTES:
                events_1h += total
    return {
        "events_1h": events_1h,
        "events_24h": events_24h,
        "events_7d": events_7d,
        "product_views_24h": views_24h,
        "cart_adds_24h": adds_24h,
        "cart_removes_24h": removes_24h,
        "purchases_7d": purchases_7d,
        "revenue_7d": revenue_7d,
        "last_event_ts": _not_after(state.last_event_ts, as_of),
        "last_purchase_ts": _not_after(state.last_purchase_ts, as_of),
    }


def history_features(state: UserState, as_of: float) -> dict[str, float | None]:
    """The 90-day history feature group as of ``as_of`` (epoch s)."""
    today = int(as_of // DAY)
    orders = revenue = 0.0
    purchase_days = 0
    for day, (count, amount) in state.days.items():
        age = today - day
        if 0 <= age < HISTORY_DAYS and count > 0:
            orders += count
            revenue += amount
            purchase_days += 1
    return {
        "orders_90d": orders,
        "revenue_90d": revenue,
        "avg_order_value_90d": revenue / orders if orders else 0.0,
        "purchase_days_90d": float(purchase_days),
        "first_seen_ts": _not_after(state.first_seen_ts, as_of),
    }


def request_features(stored: dict[str, float | None], as_of: float) -> dict[str, float]:
    """Ages derived from stored timestamps at read time; missing means the cap."""

    def age(key: str) -> float:
        ts = stored.get(key)
        if ts is None:
            return AGE_CAP_SECONDS
        return min(max(as_of - ts, 0.0), AGE_CAP_SECONDS)

    return {
        "hours_since_last_event": age("last_event_ts") / 3600.0,
        "days_since_last_purchase": age("last_purchase_ts") / DAY,
        "tenure_days": age("first_seen_ts") / DAY,
    }


def _not_after(ts: float | None, as_of: float) -> float | None:
    # A replayed state may hold later events; "as of" must not see them.
    return ts if ts is not None and ts <= as_of else None
