"""Rule evaluation on one user's events: timers, repeats, conditions, cool-downs."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from core.events import Event
from core.rules.engine import fire_due, on_events
from core.rules.spec import parse_rules
from core.rules.state import MAX_REPEAT_KEYS, RuleState
from core.store.state_store import decode_fields, outbox_value
from core.user_state import UserState

T0 = 1_800_000_000.0
RULES = parse_rules(
    """
rules:
  - name: cart_abandoned
    on: add_to_cart
    after: 30m
    unless: [purchase]
    cooldown: 6h
  - name: repeat_interest
    on: product_view
    per: product_id
    count: 3
    within: 24h
  - name: hot_lead
    when: propensity >= 0.5 and events_1h >= 3
    lasts: 30m
  - name: lapsing
    on: purchase
    when: purchase_days_lifetime >= 3
    after: 2 * purchase_gap_mean_days * day
    unless: [purchase]
"""
)


def _event(n: int, kind: str, at: float, product: str | None = None) -> Event:
    return Event(
        event_id=f"e{n}",
        user_id="u",
        event_type=kind,
        ts=at,
        product_id=product,
        price=10.0 if kind in ("product_view", "add_to_cart") else None,
        revenue=20.0 if kind == "purchase" else None,
    )


def _fired(state: RuleState) -> list[tuple[str, float, str]]:
    return [(r["rule"], r["at_ts"], r["caused_by"]) for r in state.outbox]


def test_cart_timer_fires_at_its_due_time_with_its_cause() -> None:
    state = RuleState()
    on_events(RULES, "u", state, [_event(1, "add_to_cart", T0)], {})
    assert state.next_due() == T0 + 1800
    assert fire_due(RULES, "u", state, T0 + 1799).fired == 0
    done = fire_due(RULES, "u", state, T0 + 1800)
    assert done.fired == 1
    (record,) = state.outbox
    assert (record["rule"], record["at_ts"], record["caused_by"]) == (
        "cart_abandoned",
        T0 + 1800,
        "e1",
    )
    assert record["id"] == "u:r1" and record["values"]["after_seconds"] == 1800
    assert state.timers == {} and state.active(T0 + 1801).keys() == {"cart_abandoned"}


def test_a_purchase_cancels_the_timer_and_a_later_add_rearms_it() -> None:
    state = RuleState()
    on_events(RULES, "u", state, [_event(1, "add_to_cart", T0)], {})
    on_events(RULES, "u", state, [_event(2, "purchase", T0 + 600)], {})
    assert "cart_abandoned" not in state.timers
    on_events(RULES, "u", state, [_event(3, "add_to_cart", T0 + 900)], {})
    on_events(RULES, "u", state, [_event(4, "add_to_cart", T0 + 1200)], {})
    assert state.timers["cart_abandoned"].due == T0 + 1200 + 1800  # latest add
    fire_due(RULES, "u", state, T0 + 10_000)
    assert _fired(state) == [("cart_abandoned", T0 + 3000, "e4")]


def test_events_in_one_batch_follow_event_time() -> None:
    # The purchase comes after the due time: the cart was abandoned before it.
    state = RuleState()
    batch = [_event(2, "purchase", T0 + 2400), _event(1, "add_to_cart", T0)]
    on_events(RULES, "u", state, batch, {})
    assert _fired(state) == [("cart_abandoned", T0 + 1800, "e1")]
    # A purchase before the due time cancels, whatever order the batch holds.
    other = RuleState()
    on_events(
        RULES,
        "u",
        other,
        [_event(2, "purchase", T0 + 60), _event(1, "add_to_cart", T0)],
        {},
    )
    assert other.timers == {} and other.outbox == ()


def test_cool_down_suppresses_a_second_fire_but_not_the_membership() -> None:
    state = RuleState()
    on_events(RULES, "u", state, [_event(1, "add_to_cart", T0)], {})
    fire_due(RULES, "u", state, T0 + 1800)
    on_events(RULES, "u", state, [_event(2, "add_to_cart", T0 + 3600)], {})
    done = fire_due(RULES, "u", state, T0 + 3600 + 1800)
    assert (done.fired, done.suppressed) == (0, 1)
    assert len(state.outbox) == 1
    on_events(RULES, "u", state, [_event(3, "add_to_cart", T0 + 7 * 3600)], {})
    assert fire_due(RULES, "u", state, T0 + 8 * 3600).fired == 1


def test_repeat_interest_counts_per_product_within_the_window() -> None:
    state = RuleState()
    views = [
        _event(1, "product_view", T0, "p1"),
        _event(2, "product_view", T0 + 10, "p2"),
        _event(3, "product_view", T0 + 20, "p1"),
    ]
    on_events(RULES, "u", state, views, {})
    assert state.outbox == ()
    # The third view of p1, but a day after the first: only two in the window.
    on_events(RULES, "u", state, [_event(4, "product_view", T0 + 86_401, "p1")], {})
    assert state.outbox == ()
    on_events(RULES, "u", state, [_event(5, "product_view", T0 + 86_410, "p1")], {})
    (record,) = state.outbox
    assert record["rule"] == "repeat_interest"
    assert record["values"] == {
        "product_id": "p1",
        "count": 3,
        "within_seconds": 86_400,
    }


def test_repeat_state_is_bounded_per_user() -> None:
    state = RuleState()
    views = [_event(i, "product_view", T0 + i, f"p{i}") for i in range(500)]
    on_events(RULES, "u", state, views, {})
    keys = state.repeats["repeat_interest"]
    assert len(keys) == MAX_REPEAT_KEYS
    assert "p499" in keys and "p0" not in keys  # the stalest went first


def test_condition_fires_on_entering_and_membership_lasts() -> None:
    state = RuleState()
    hot = {"propensity": 0.7, "events_1h": 4}
    on_events(RULES, "u", state, [_event(1, "page_view", T0)], hot)
    on_events(RULES, "u", state, [_event(2, "page_view", T0 + 60)], hot)
    assert _fired(state) == [("hot_lead", T0, "e1")]  # once, on entering
    assert state.members["hot_lead"].until == T0 + 60 + 1800  # extended
    on_events(
        RULES, "u", state, [_event(3, "page_view", T0 + 120)], {"propensity": 0.1}
    )
    assert state.active(T0 + 121) == {}
    on_events(RULES, "u", state, [_event(4, "page_view", T0 + 180)], hot)
    assert [r[0] for r in _fired(state)] == ["hot_lead", "hot_lead"]


def test_a_missing_value_never_fires() -> None:
    state = RuleState()
    on_events(RULES, "u", state, [_event(1, "page_view", T0)], {"propensity": None})
    assert state.outbox == ()


def test_lapsing_timer_reads_the_users_own_gap() -> None:
    state = RuleState()
    values = {"purchase_days_lifetime": 4, "purchase_gap_mean_days": 7.0}
    on_events(RULES, "u", state, [_event(1, "purchase", T0)], values)
    assert state.timers["lapsing"].due == T0 + 14 * 86_400
    assert state.timers["lapsing"].values["purchase_gap_mean_days"] == 7.0
    seldom = RuleState()
    on_events(
        RULES, "u", seldom, [_event(1, "purchase", T0)], {"purchase_days_lifetime": 1}
    )
    assert "lapsing" not in seldom.timers


def test_removed_rules_leave_no_timer_behind() -> None:
    state = RuleState()
    on_events(RULES, "u", state, [_event(1, "add_to_cart", T0)], {})
    fewer = parse_rules("rules:\n  - name: hot_lead\n    when: events_1h > 100\n")
    assert fire_due(fewer, "u", state, T0 + 5000).fired == 0
    assert state.timers == {}


def test_records_survive_a_round_trip_through_storage() -> None:
    state = RuleState()
    on_events(RULES, "u", state, [_event(1, "add_to_cart", T0)], {})
    fire_due(RULES, "u", state, T0 + 1800)
    assert state.outbox, "the fire left a record to produce"
    user = UserState(rules=state)
    # The outbox is stored in a field of its own, the rest with the dedupe data.
    assert b"u:r1" not in user.dedupe_bytes()
    again = decode_fields(None, user.dedupe_bytes(), outbox_value(user))
    assert again.rules == state


def test_an_outbox_kept_in_the_dedupe_data_by_an_older_worker_still_reads() -> None:
    state = RuleState()
    on_events(RULES, "u", state, [_event(1, "add_to_cart", T0)], {})
    fire_due(RULES, "u", state, T0 + 1800)
    old = state.to_json()
    old[5] = list(state.outbox)  # where workers before the outbox field kept it
    back = decode_fields(None, orjson.dumps({"s": {}, "o": {}, "r": old}))
    assert back.rules == state


kinds = st.sampled_from(["add_to_cart", "purchase", "page_view", "product_view"])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(kinds, st.integers(0, 20_000)), max_size=30), st.integers(1, 5)
)
def test_batching_does_not_change_what_fires(
    events: list[tuple[str, int]], cut: int
) -> None:
    """The same events give the same records whether they come in one batch or many."""
    stream = [_event(i, kind, T0 + at, "p") for i, (kind, at) in enumerate(events)]
    stream.sort(key=lambda e: e.ts)
    whole = RuleState()
    on_events(RULES, "u", whole, stream, {})
    fire_due(RULES, "u", whole, T0 + 10**6)
    parts = RuleState()
    for start in range(0, len(stream), cut):
        on_events(RULES, "u", parts, stream[start : start + cut], {})
    fire_due(RULES, "u", parts, T0 + 10**6)
    assert _fired(whole) == _fired(parts)
