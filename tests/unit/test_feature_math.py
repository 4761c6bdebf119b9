"""Feature math on tiny hand-made histories: windows, dedupe, lateness, ages."""

from __future__ import annotations

import pytest

from streams.events import Event, EventType
from streams.feature_math import history_features, request_features, stream_features
from streams.user_state import DAY, Outcome, UserState, apply_event

T0 = 1_800_000_000.0  # a minute boundary: 1_800_000_000 % 60 == 0
LATENESS = 600


def ev(
    n: int, ts: float, etype: EventType = EventType.PAGE_VIEW, revenue: float = 0.0
) -> Event:
    return Event(
        event_id=f"e{n}",
        user_id="u1",
        event_type=etype,
        ts=ts * 1000,
        revenue=revenue if etype is EventType.PURCHASE else None,
    )


def fold(*events: Event) -> UserState:
    state = UserState()
    for event in events:
        apply_event(state, event, LATENESS)
    return state


def test_windows_count_what_lies_inside_them() -> None:
    state = fold(
        ev(1, T0 - 8 * DAY),  # outside every window
        ev(2, T0 - 2 * DAY, EventType.PURCHASE, revenue=40.0),  # 7d only
        ev(3, T0 - 3 * 3600, EventType.ADD_TO_CART),  # 24h and 7d
        ev(4, T0 - 600, EventType.PRODUCT_VIEW),  # every window
        ev(5, T0 - 30, EventType.PURCHASE, revenue=10.0),
    )
    features = stream_features(state, T0)
    assert features == {
        "events_1h": 2.0,
        "events_24h": 3.0,
        "events_7d": 4.0,
        "product_views_24h": 1.0,
        "cart_adds_24h": 1.0,
        "cart_removes_24h": 0.0,
        "purchases_7d": 2.0,
        "revenue_7d": 50.0,
        "last_event_ts": T0 - 30,
        "last_purchase_ts": T0 - 30,
    }


def test_windows_are_right_when_read_later() -> None:
    state = fold(ev(1, T0 - 60), ev(2, T0 - 30))
    assert stream_features(state, T0)["events_1h"] == 2.0
    later = stream_features(state, T0 + 2 * 3600)
    assert later["events_1h"] == 0.0
    assert later["events_24h"] == 2.0


def test_events_after_the_read_instant_are_not_seen() -> None:
    state = fold(ev(1, T0 - 60), ev(2, T0 + 120, EventType.PURCHASE, revenue=5.0))
    features = stream_features(state, T0)
    assert features["events_1h"] == 1.0
    assert features["purchases_7d"] == 0.0
    assert features["last_purchase_ts"] is None


def test_duplicates_are_ignored_and_late_events_refused() -> None:
    state = UserState()
    assert apply_event(state, ev(1, T0), LATENESS) is Outcome.APPLIED
    assert apply_event(state, ev(1, T0), LATENESS) is Outcome.DUPLICATE
    in_time = ev(2, T0 - LATENESS + 1)
    assert apply_event(state, in_time, LATENESS) is Outcome.APPLIED
    assert apply_event(state, ev(3, T0 - LATENESS - 1), LATENESS) is Outcome.LATE
    assert stream_features(state, T0)["events_1h"] == 2.0


def test_out_of_order_events_land_in_their_bucket() -> None:
    ordered = fold(ev(1, T0 - 300), ev(2, T0 - 100), ev(3, T0 - 50))
    shuffled = fold(ev(3, T0 - 50), ev(1, T0 - 300), ev(2, T0 - 100))
    assert stream_features(ordered, T0) == stream_features(shuffled, T0)


def test_state_survives_serialization() -> None:
    state = fold(ev(1, T0 - 90), ev(2, T0 - 30, EventType.PURCHASE, revenue=9.5))
    again = UserState.from_bytes(state.to_bytes())
    assert again == state


def test_history_features_over_ninety_days() -> None:
    state = fold(
        ev(1, T0 - 100 * DAY, EventType.PURCHASE, revenue=100.0),
        ev(2, T0 - 20 * DAY, EventType.PURCHASE, revenue=30.0),
        ev(3, T0 - 20 * DAY + 60, EventType.PURCHASE, revenue=10.0),
        ev(4, T0 - 2 * DAY, EventType.PURCHASE, revenue=20.0),
    )
    assert history_features(state, T0) == {
        "orders_90d": 3.0,
        "revenue_90d": 60.0,
        "avg_order_value_90d": 20.0,
        "purchase_days_90d": 2.0,
        "first_seen_ts": T0 - 100 * DAY,
    }


def test_ages_are_computed_at_read_time_and_capped() -> None:
    stored = {"last_event_ts": T0 - 7200, "last_purchase_ts": None, "first_seen_ts": T0}
    ages = request_features(stored, T0)
    assert ages["hours_since_last_event"] == pytest.approx(2.0)
    assert ages["days_since_last_purchase"] == 90.0
    assert ages["tenure_days"] == 0.0
    assert request_features(stored, T0 + 3600)["hours_since_last_event"] == 3.0
