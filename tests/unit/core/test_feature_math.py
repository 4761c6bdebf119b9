"""Feature math on tiny hand-made histories: windows, dedupe, lateness, ages."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.events import Event, EventType
from core.feature_catalog import (
    HISTORY_FEATURES,
    HISTORY_NAMES,
    STREAM_FEATURES,
    STREAM_NAMES,
)
from core.feature_math import (
    history_features,
    history_values,
    request_features,
    stream_features,
    stream_values,
)
from core.user_state import (
    D_ADDS,
    D_EVENTS,
    D_PURCHASES,
    D_REVENUE,
    D_SESSIONS,
    D_VIEWS,
    DAY,
    DAY_SLOTS,
    HOUR,
    S_ADDS,
    S_EVENTS,
    S_PURCHASES,
    S_REMOVES,
    S_REVENUE,
    S_VIEW_PRICE_N,
    S_VIEW_PRICE_SUM,
    S_VIEWS,
    SLOTS,
    Outcome,
    UserState,
    apply_event,
    apply_fields,
)

T0 = 1_800_000_000.0  # an hour boundary: 1_800_000_000 % 3600 == 0
LATENESS = 600
_counter = iter(range(1_000_000))


def ev(
    ts: float,
    etype: EventType = EventType.PAGE_VIEW,
    *,
    revenue: float | None = None,
    price: float | None = None,
    session: str | None = None,
    category: str | None = None,
    event_id: str | None = None,
) -> Event:
    return Event(
        event_id=event_id or f"e{next(_counter)}",
        user_id="u1",
        event_type=etype,
        ts=ts * 1000,
        revenue=revenue,
        price=price,
        session_id=session,
        category=category,
    )


def fold(*events: Event) -> UserState:
    state = UserState()
    for event in events:
        apply_event(state, event, LATENESS)
    return state


def test_every_catalogued_feature_is_computed() -> None:
    state = fold(ev(T0 - 60))
    assert set(stream_features(state, T0)) == {s.name for s in STREAM_FEATURES}
    assert set(history_features(state, T0)) == {s.name for s in HISTORY_FEATURES}


def test_windows_count_what_lies_inside_them() -> None:
    state = fold(
        ev(T0 - 8 * DAY),  # outside every window
        ev(T0 - 2 * DAY, EventType.PURCHASE, revenue=40.0),  # 7d only
        ev(T0 - 3 * HOUR, EventType.ADD_TO_CART),  # 24h and 7d
        ev(T0 - 600, EventType.PRODUCT_VIEW, price=20.0),  # every window
        ev(T0 - 30, EventType.PURCHASE, revenue=10.0),
    )
    f = stream_features(state, T0)
    expected = {
        "events_1h": 2.0,
        "events_24h": 3.0,
        "events_7d": 4.0,
        "product_views_1h": 1.0,
        "product_views_24h": 1.0,
        "cart_adds_1h": 0.0,
        "cart_adds_24h": 1.0,
        "cart_adds_7d": 1.0,
        "purchases_1h": 1.0,
        "purchases_24h": 1.0,
        "purchases_7d": 2.0,
        "revenue_1h": 10.0,
        "revenue_7d": 50.0,
        "avg_viewed_price_24h": 20.0,
        "view_to_cart_rate_7d": 1.0,
        "last_event_ts": T0 - 30,
        "last_purchase_ts": T0 - 30,
    }
    assert {k: f[k] for k in expected} == expected


def test_windows_are_right_when_read_later() -> None:
    state = fold(ev(T0 - 60), ev(T0 - 30))
    assert stream_features(state, T0)["events_1h"] == 2.0
    later = stream_features(state, T0 + 2 * HOUR)
    assert later["events_1h"] == 0.0
    assert later["events_24h"] == 2.0
    assert stream_features(state, T0 + 8 * DAY)["events_7d"] == 0.0


def test_events_after_the_read_instant_are_not_seen() -> None:
    # Buckets after the read's bucket are ignored (within one bucket, the state
    # never holds later events: online reads are at "now", backfill folds in order).
    state = fold(ev(T0 - 60), ev(T0 + 2 * HOUR, EventType.PURCHASE, revenue=5.0))
    features = stream_features(state, T0)
    assert features["events_24h"] == 1.0
    assert features["purchases_7d"] == 0.0
    assert features["last_purchase_ts"] is None


def test_sessions_and_categories_are_distinct_counts() -> None:
    state = fold(
        ev(T0 - 2 * DAY, session="a", category="toys"),
        ev(T0 - 3 * HOUR, session="b", category="toys"),
        ev(T0 - 3 * HOUR + 60, session="b", category="books"),
        ev(T0 - 120, session="c", category="toys"),
    )
    f = stream_features(state, T0)
    assert (f["sessions_1h"], f["sessions_24h"], f["sessions_7d"]) == (1.0, 2.0, 3.0)
    assert f["distinct_categories_24h"] == 2.0


def test_cart_abandonment_needs_thirty_quiet_minutes() -> None:
    state = fold(
        ev(T0 - 5 * HOUR, EventType.ADD_TO_CART),  # abandoned
        ev(T0 - 3 * HOUR, EventType.ADD_TO_CART),  # bought 10 min later
        ev(T0 - 3 * HOUR + 600, EventType.PURCHASE, revenue=1.0),
        ev(T0 - 600, EventType.ADD_TO_CART),  # undecided: only 10 min ago
    )
    assert stream_features(state, T0)["cart_abandonments_24h"] == 1.0
    assert stream_features(state, T0 + 1800)["cart_abandonments_24h"] == 2.0


def test_engagement_decays_with_a_one_day_half_life() -> None:
    state = fold(ev(T0 - DAY, EventType.PURCHASE, revenue=1.0), ev(T0))
    assert stream_features(state, T0)["engagement_score"] == pytest.approx(5 / 2 + 1)
    later = stream_features(state, T0 + DAY)["engagement_score"]
    assert later == pytest.approx((5 / 2 + 1) / 2)
    shuffled = fold(ev(T0), ev(T0 - 300, EventType.PURCHASE, revenue=1.0))
    assert stream_features(shuffled, T0)["engagement_score"] == pytest.approx(
        5 * math.exp(-math.log(2) * 300 / DAY) + 1
    )


def test_duplicates_are_ignored_and_late_events_refused() -> None:
    state = UserState()
    assert apply_event(state, ev(T0, event_id="x"), LATENESS) is Outcome.APPLIED
    assert apply_event(state, ev(T0, event_id="x"), LATENESS) is Outcome.DUPLICATE
    assert apply_event(state, ev(T0 - LATENESS + 1), LATENESS) is Outcome.APPLIED
    assert apply_event(state, ev(T0 - LATENESS - 1), LATENESS) is Outcome.LATE
    assert stream_features(state, T0)["events_1h"] == 2.0


def test_out_of_order_events_land_in_their_bucket() -> None:
    a, b, c = ev(T0 - 300), ev(T0 - 100), ev(T0 - 50)
    assert stream_features(fold(a, b, c), T0) == stream_features(fold(c, a, b), T0)


def test_state_survives_serialization() -> None:
    state = fold(
        ev(T0 - 90, session="s", category="toys"),
        ev(T0 - 30, EventType.PURCHASE, revenue=9.5),
    )
    assert UserState.from_bytes(state.to_bytes()) == state
    read_copy = UserState.from_bytes(state.to_bytes(with_dedupe=False))
    assert read_copy.seen == {}
    assert stream_features(read_copy, T0 + 60) == stream_features(state, T0 + 60)


def test_pruning_never_changes_a_window() -> None:
    events = [
        ev(T0 + i * 7 * 60, EventType.PRODUCT_VIEW, price=1.0) for i in range(3000)
    ]
    state = fold(*events)
    end = events[-1].ts
    assert len(state.minutes) <= 60 + LATENESS // 60 + 2
    naive_7d = sum(1 for e in events if e.ts // HOUR >= (end - 7 * DAY) // HOUR)
    assert stream_features(state, end)["product_views_7d"] == naive_7d


def test_history_features_over_thirty_and_ninety_days() -> None:
    state = fold(
        ev(T0 - 100 * DAY, EventType.PURCHASE, revenue=100.0),
        ev(T0 - 40 * DAY, EventType.PURCHASE, revenue=30.0, session="a"),
        ev(T0 - 20 * DAY, EventType.PURCHASE, revenue=10.0, session="b"),
        ev(T0 - 20 * DAY + 60, EventType.PURCHASE, revenue=10.0, session="b"),
        ev(T0 - 2 * DAY, EventType.PRODUCT_VIEW, session="c"),
    )
    f = history_features(state, T0)
    assert f["orders_90d"] == 3.0
    assert f["revenue_90d"] == 50.0
    assert f["avg_order_value_90d"] == pytest.approx(50.0 / 3)
    assert f["purchase_days_90d"] == 2.0
    assert (f["orders_30d"], f["sessions_30d"], f["product_views_30d"]) == (2, 2, 1)
    assert f["conversion_rate_30d"] == 0.5
    assert f["first_seen_ts"] == T0 - 100 * DAY


def test_ages_are_computed_at_read_time() -> None:
    stored = {"last_event_ts": T0 - 7200, "last_purchase_ts": None, "first_seen_ts": T0}
    ages = request_features(stored, T0)
    assert ages["hours_since_last_event"] == pytest.approx(2.0)
    assert ages["days_since_last_purchase"] == 0.0  # never purchased: the tenure
    assert ages["tenure_days"] == 0.0
    assert request_features(stored, T0 + 3600)["hours_since_last_event"] == 3.0


_AGE_NAMES = (
    "hours_since_last_event",
    "tenure_days",
    "days_since_first_purchase",
    "days_since_last_purchase",
    "days_since_previous_purchase",
)


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        pytest.param(
            {
                "last_event_ts": T0 - 400 * DAY,
                "first_seen_ts": T0 - 401 * DAY,
                "first_purchase_ts": T0 - 401 * DAY,
                "previous_purchase_ts": T0 - 400.5 * DAY,
                "last_purchase_ts": T0 - 400 * DAY,
            },
            (400 * 24, 401, 401, 400, 400.5),
            id="uncapped-400-days",
        ),
        pytest.param(
            {"last_event_ts": T0 - DAY, "first_seen_ts": T0 - 400 * DAY},
            (24, 400, 400, 400, 400),
            id="never-purchased-reads-as-the-whole-life",
        ),
        pytest.param(
            {
                "last_event_ts": T0 - DAY,
                "first_seen_ts": T0 - 50 * DAY,
                "first_purchase_ts": T0 - 10 * DAY,
                "last_purchase_ts": T0 - 10 * DAY,
            },
            (24, 50, 10, 10, 50),
            id="one-purchase-day-has-no-previous-one-reads-as-the-tenure",
        ),
        pytest.param(
            {
                "last_event_ts": T0 - DAY,
                "first_seen_ts": T0 - 50 * DAY,
                "last_purchase_ts": T0 - 2 * DAY,
            },
            (24, 50, 2, 2, 50),
            id="first-purchase-unknown-falls-back-to-the-last",
        ),
        pytest.param(
            {"first_seen_ts": T0 - 3 * DAY},
            (3 * 24, 3, 3, 3, 3),
            id="no-last-event-reads-as-the-tenure",
        ),
        pytest.param({}, (0, 0, 0, 0, 0), id="never-seen-is-zero"),
        pytest.param(
            {
                "last_event_ts": T0 + HOUR,
                "first_seen_ts": T0 + HOUR,
                "first_purchase_ts": T0 + HOUR,
                "previous_purchase_ts": T0 + HOUR,
                "last_purchase_ts": T0 + HOUR,
            },
            (0, 0, 0, 0, 0),
            id="after-the-read-is-zero",
        ),
    ],
)
def test_ages_are_uncapped_and_finite_when_nothing_happened(
    stored: dict[str, float], expected: tuple[float, ...]
) -> None:
    ages = request_features(stored, T0)
    assert tuple(ages[name] for name in _AGE_NAMES) == pytest.approx(expected)
    as_rows = request_features(
        {k: np.array([v, math.nan]) for k, v in stored.items()}, np.array([T0, T0])
    )
    assert tuple(as_rows[name][0] for name in _AGE_NAMES) == pytest.approx(expected)
    assert all(np.isfinite(as_rows[name]).all() for name in _AGE_NAMES)


def _purchase(days_ago: float, revenue: float) -> Event:
    return ev(T0 - days_ago * DAY, EventType.PURCHASE, revenue=revenue)


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param(
            [
                _purchase(400, 10.0),
                _purchase(300, 20.0),
                _purchase(300 - 1 / 24, 5.0),  # same day: one purchase day
                _purchase(100, 40.0),
            ],
            # orders, revenue, days, gap mean, gap std, first purchase
            (4.0, 75.0, 3.0, 150.0, 50.0, T0 - 400 * DAY),
            id="beyond-the-day-buckets",
        ),
        pytest.param(
            [_purchase(3, 1.0), _purchase(2, 1.0), _purchase(1, 1.0)],
            (3.0, 3.0, 3.0, 1.0, 0.0, T0 - 3 * DAY),
            id="daily-buyer",
        ),
        pytest.param(
            [_purchase(200, 8.0)],
            (1.0, 8.0, 1.0, 0.0, 0.0, T0 - 200 * DAY),
            id="one-purchase-no-gap",
        ),
        pytest.param(
            [ev(T0 - 200 * DAY), ev(T0 - DAY, EventType.PRODUCT_VIEW)],
            (0.0, 0.0, 0.0, 0.0, 0.0, None),
            id="never-purchased",
        ),
    ],
)
def test_lifetime_history_features(
    events: list[Event], expected: tuple[float | None, ...]
) -> None:
    f = history_features(fold(*events), T0)
    got = tuple(
        f[name]
        for name in (
            "orders_lifetime",
            "revenue_lifetime",
            "purchase_days_lifetime",
            "purchase_gap_mean_days",
            "purchase_gap_std_days",
            "first_purchase_ts",
        )
    )
    assert got == pytest.approx(expected)


def test_customers_idle_for_different_long_times_no_longer_look_the_same() -> None:
    # Capped at 90 days, these two read identically; uncapped, recency and
    # lifetime frequency tell them apart.
    recent = fold(_purchase(100, 5.0), ev(T0 - 100 * DAY))
    lapsed = fold(_purchase(500, 5.0), _purchase(400, 5.0), ev(T0 - 400 * DAY))
    rows = []
    for state in (recent, lapsed):
        stored = {**stream_features(state, T0), **history_features(state, T0)}
        rows.append({**history_features(state, T0), **request_features(stored, T0)})
    assert rows[0]["days_since_last_purchase"] == pytest.approx(100.0)
    assert rows[1]["days_since_last_purchase"] == pytest.approx(400.0)
    assert rows[1]["days_since_first_purchase"] == pytest.approx(500.0)
    assert (rows[0]["orders_lifetime"], rows[1]["orders_lifetime"]) == (1.0, 2.0)
    assert rows[0]["orders_90d"] == rows[1]["orders_90d"] == 0.0


def test_lifetime_read_before_later_purchases_leaves_them_out() -> None:
    state = fold(_purchase(10, 1.0), _purchase(5, 2.0), _purchase(2, 4.0))
    f = history_features(state, T0 - 4 * DAY)
    assert (f["orders_lifetime"], f["revenue_lifetime"]) == (2.0, 3.0)
    assert f["purchase_days_lifetime"] == 2.0
    assert (f["purchase_gap_mean_days"], f["purchase_gap_std_days"]) == (5.0, 0.0)
    assert f["first_purchase_ts"] == T0 - 10 * DAY
    before = history_features(state, T0 - 20 * DAY)
    assert before["orders_lifetime"] == before["purchase_days_lifetime"] == 0.0
    assert before["first_purchase_ts"] is None


def test_state_does_not_depend_on_arrival_order_within_lateness() -> None:
    midnight = (T0 // DAY + 1) * DAY
    events = [
        ev(midnight - 240, session="s", category="toys"),
        ev(midnight + 60, EventType.ADD_TO_CART, session="s"),
        ev(midnight + 120, EventType.PURCHASE, revenue=3.0, session="s"),
    ]
    ordered = fold(*events)
    shuffled = fold(events[2], events[0], events[1])
    at = midnight + 3600
    assert history_features(ordered, at) == history_features(shuffled, at)
    assert stream_features(ordered, at) == pytest.approx(stream_features(shuffled, at))
    assert history_features(ordered, at)["sessions_30d"] == 1.0


def test_a_replay_is_recognised_by_offset_beyond_the_dedupe_window() -> None:
    state = UserState()
    first = ev(T0, event_id="a")
    assert apply_event(state, first, LATENESS, offset=7) is Outcome.APPLIED
    assert apply_event(state, ev(T0 + DAY), LATENESS, offset=8) is Outcome.APPLIED
    # The replayed first event is far older than the lateness: a duplicate by
    # offset, not a late event for the DLQ.
    assert apply_event(state, first, LATENESS, offset=7) is Outcome.DUPLICATE
    assert UserState.from_bytes(state.to_bytes()).offsets == {"": 8}


def test_value_tuples_are_the_named_features_in_catalogue_order() -> None:
    # The tests above check each value by name; names and tuple positions agree.
    state = fold(
        ev(T0 - 3 * HOUR, EventType.ADD_TO_CART, session="a", category="toys"),
        ev(T0 - 60, EventType.PRODUCT_VIEW, price=5.0, session="a"),
    )
    streamed = stream_values(state, T0)
    assert tuple(s.name for s in STREAM_FEATURES) == STREAM_NAMES
    assert tuple(s.name for s in HISTORY_FEATURES) == HISTORY_NAMES
    assert stream_features(state, T0) == dict(zip(STREAM_NAMES, streamed, strict=True))
    named = history_features(state, T0)
    assert named == dict(zip(HISTORY_NAMES, history_values(state, T0), strict=True))
    assert tuple(named) == HISTORY_NAMES
    # ``missing`` stands in for timestamps unknown as of the read, and only there.
    early = stream_values(state, T0 - 4 * HOUR, missing=math.nan)
    by_name = dict(zip(STREAM_NAMES, early, strict=True))
    assert math.isnan(by_name["last_event_ts"])
    assert math.isnan(by_name["last_purchase_ts"])
    assert not any(math.isnan(v) for k, v in by_name.items() if not k.endswith("_ts"))
    assert math.isnan(history_values(state, T0 - 4 * HOUR, missing=math.nan)[-1])


def test_buckets_unpack_in_slot_order() -> None:
    # The feature functions unpack buckets positionally.
    slots = (S_EVENTS, S_VIEWS, S_ADDS, S_REMOVES, S_PURCHASES, S_REVENUE)
    assert (*slots, S_VIEW_PRICE_SUM, S_VIEW_PRICE_N) == tuple(range(SLOTS))
    day_slots = (D_PURCHASES, D_REVENUE, D_SESSIONS, D_VIEWS, D_ADDS, D_EVENTS)
    assert day_slots == tuple(range(DAY_SLOTS))


def test_apply_fields_is_apply_event() -> None:
    events = [
        ev(T0 - 300, EventType.PRODUCT_VIEW, price=3.0, session="s", category="c"),
        ev(T0 - 200, EventType.PURCHASE, revenue=7.5, session="s", event_id="p"),
        ev(T0 - 400, EventType.ADD_TO_CART, session="s"),  # late within lateness
        ev(T0 - 200, EventType.PURCHASE, revenue=7.5, event_id="p"),  # duplicate
        ev(T0 - 5000, EventType.PAGE_VIEW),  # too late
    ]
    by_event, by_fields = UserState(), UserState()
    for event in events:
        outcome = apply_fields(
            by_fields,
            event.event_id,
            event.event_type,
            event.ts,
            event.session_id,
            event.category,
            event.price,
            event.revenue,
            LATENESS,
        )
        assert apply_event(by_event, event, LATENESS) is outcome
        assert by_fields == by_event


def test_request_features_give_the_same_ages_for_one_user_or_many() -> None:
    # Training sets derive ages for millions of rows at once, scoring for one user
    # at a time; both go through the same function and must agree exactly.
    last = [T0 - 7200.5, None, T0 + 50.0, T0 - 200 * DAY]
    purchase = [None, T0 - 3 * DAY, T0 - 1.0, None]
    first = [T0 - 10 * DAY, T0 - 1.0, None, T0 - 365 * DAY]
    first_purchase = [None, T0 - 5 * DAY, None, None]
    previous = [None, T0 - 4 * DAY, None, None]
    as_of = [T0, T0 + 1.0, T0, T0 + 0.25]
    one_by_one = [
        request_features(
            {
                "last_event_ts": a,
                "last_purchase_ts": b,
                "first_seen_ts": c,
                "first_purchase_ts": d,
                "previous_purchase_ts": e,
            },
            t,
        )
        for a, b, c, d, e, t in zip(
            last, purchase, first, first_purchase, previous, as_of, strict=True
        )
    ]
    assert all(isinstance(v, float) for row in one_by_one for v in row.values())

    def column(values: list[float | None]) -> np.ndarray:
        return np.array([math.nan if v is None else v for v in values])

    together = request_features(
        {
            "last_event_ts": column(last),
            "last_purchase_ts": column(purchase),
            "first_seen_ts": column(first),
            "first_purchase_ts": column(first_purchase),
            "previous_purchase_ts": column(previous),
        },
        np.array(as_of),
    )
    assert set(together) == set(_AGE_NAMES)
    for name, values in together.items():
        assert values.tolist() == [row[name] for row in one_by_one]
    # Never happened, in the future of the read, or older than 90 days.
    assert one_by_one[1]["hours_since_last_event"] == pytest.approx(2 / HOUR)
    assert one_by_one[2]["hours_since_last_event"] == 0.0
    assert one_by_one[3]["tenure_days"] == pytest.approx(365.0, abs=1e-5)
    assert one_by_one[3]["days_since_last_purchase"] == one_by_one[3]["tenure_days"]
    assert one_by_one[1]["days_since_first_purchase"] == pytest.approx(5.0, abs=1e-4)
    assert one_by_one[1]["days_since_previous_purchase"] == pytest.approx(4.0, abs=1e-4)
    # Fewer than two purchase days: the tenure, in both forms.
    assert one_by_one[3]["days_since_previous_purchase"] == one_by_one[3]["tenure_days"]
    assert one_by_one[0]["days_since_previous_purchase"] == pytest.approx(10.0)


# Gaps from sub-second to weeks, and steps back within and beyond the lateness:
# every expiry rule of the state gets crossed, in order and out of it.
_STEPS = st.lists(
    st.tuples(
        st.sampled_from([0.4, 30.0, 61.0, 700.0, 3_700.0, 90_000.0, 700_000.0]),
        st.sampled_from([1.0, 1.0, 1.0, -0.3, -1.1]),
        st.sampled_from(list(EventType)),
        st.sampled_from([None, "s1", "s2", "s3"]),
        st.sampled_from([None, "toys", "books"]),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(steps=_STEPS, lateness=st.sampled_from([0, 600, 3_600]))
def test_lazy_pruning_keeps_exactly_what_pruning_every_minute_keeps(
    steps: list[tuple[float, float, EventType, str | None, str | None]],
    lateness: int,
) -> None:
    times = []
    ts = T0
    for gap, direction, *_ in steps:
        ts += gap * direction
        times.append(ts)
    kinds = [(etype, session, category) for _, _, etype, session, category in steps]
    _assert_lazy_pruning_is_exact(times, kinds, lateness)


def test_an_out_of_order_bucket_older_than_all_others_is_pruned_on_time() -> None:
    # B alone is left after a long gap; C (within the lateness) lands in an
    # older minute than any the state holds; D is the first time C's bucket
    # is out of every window, long before B's is.
    b = T0 + 100_000 + 50
    c = b - 500
    d = (c // 60 + 1) * 60 + 3_600 + LATENESS + 1
    kinds = [(EventType.PAGE_VIEW, None, None)] * 4
    _assert_lazy_pruning_is_exact([T0, b, c, d], kinds, LATENESS)


def _assert_lazy_pruning_is_exact(
    times: list[float],
    kinds: list[tuple[EventType, str | None, str | None]],
    lateness: int,
) -> None:
    # The reference forgets the prune schedule before every event, so each new
    # minute checks every bucket: eager pruning, which lazy pruning must equal.
    lazy, eager = UserState(), UserState()
    for i, (ts, (etype, session, category)) in enumerate(
        zip(times, kinds, strict=True)
    ):
        args = (f"e{i}", etype, ts, session, category, 2.0, 3.0, lateness)
        eager._prune_due = -math.inf
        assert apply_fields(lazy, *args) is apply_fields(eager, *args)
        assert lazy == eager  # every stored field (the schedule is not one)
