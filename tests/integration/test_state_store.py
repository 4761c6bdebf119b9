"""User state written in Feast's Redis layout is what Feast itself reads back."""

from __future__ import annotations

import redis
from feast import FeatureStore

from core.events import Event, EventType
from core.feature_catalog import STATE_FEATURE
from core.feature_math import stream_features
from core.names import HISTORY_VIEW
from core.store.feast_config import feature_store
from core.store.online_seed import seed_online
from core.store.state_store import StateLayout, load_states, save_states
from core.user_state import UserState, apply_event
from feature_repo.apply import apply_repo
from infra import local_stack
from infra.settings import Settings

T0 = 1_800_000_000.0


def _state(uid: str, n: int, start: float = T0) -> UserState:
    state = UserState()
    for i in range(n):
        etype = EventType.PURCHASE if i == n - 1 else EventType.PRODUCT_VIEW
        event = Event(
            event_id=f"{uid}-{i}",
            user_id=uid,
            event_type=etype,
            ts=(start + 60 * i) * 1000,
            price=10.0 + i,
            revenue=5.0 if etype is EventType.PURCHASE else None,
            session_id="s1",
        )
        apply_event(state, event, 600, offset=100 + i)
    return state


def _online(settings: Settings) -> tuple[FeatureStore, StateLayout, redis.Redis]:
    """The session stack's Feast store (repo applied), state layout and Redis."""
    stack = local_stack.current(settings)
    store = feature_store(settings, stack.redis_url)
    apply_repo(store)
    return store, StateLayout.of(store), redis.Redis.from_url(stack.redis_url)


def test_states_round_trip_through_feast(stack_settings: Settings) -> None:
    store, layout, client = _online(stack_settings)
    states = {"store-a": _state("store-a", 3), "store-b": _state("store-b", 1)}
    keys: dict[str, bytes] = {}

    save_states(client, layout, states, keys)

    # The worker's view: the whole state back, dedupe data included.
    loaded = load_states(client, layout, [*states, "store-never"])
    assert loaded["store-a"] == states["store-a"]
    assert loaded["store-b"].offsets == {"": 100}
    assert loaded["store-b"].seen == {"store-b-0": T0}
    assert loaded["store-never"] == UserState()
    assert set(keys) == set(states)

    # Feast's view: the state blob (without dedupe data), stamped with the newest
    # event time; every window derived from it as of the read.
    got = store.get_online_features(
        features=[f"user_stream_features:{STATE_FEATURE}"],
        entity_rows=[{"user_id": u} for u in ("store-a", "store-b", "store-never")],
    ).to_dict(include_event_timestamps=True)
    read = UserState.from_bytes(got[STATE_FEATURE][0])
    assert read.seen == {} and read.offsets == {}
    assert stream_features(read, T0 + 300) == stream_features(
        states["store-a"], T0 + 300
    )
    assert stream_features(read, T0 + 300)["purchases_1h"] == 1.0
    assert UserState.from_bytes(got[STATE_FEATURE][1]).last_event_ts == T0
    assert got[STATE_FEATURE][2] is None
    # Feast reports the stored stamp in whole epoch seconds.
    assert got[f"{STATE_FEATURE}__ts"][:2] == [int(T0) + 120, int(T0)]


def test_seeding_never_replaces_a_newer_state(stack_settings: Settings) -> None:
    """A backfill seed leaves users the worker has moved past as they are."""
    store, layout, client = _online(stack_settings)
    live = {
        "seed-ahead": _state("seed-ahead", 2, start=T0 + 1_000),
        "seed-behind": _state("seed-behind", 2, start=T0),
        # Stamps a quarter second apart: the comparison reaches the nanoseconds.
        "seed-ns-ahead": _state("seed-ns-ahead", 1, start=T0 + 500.75),
        "seed-ns-behind": _state("seed-ns-behind", 1, start=T0 + 500.25),
    }
    save_states(client, layout, live)
    client.hset(layout.key("seed-garbled"), layout.ts_field, b"\xff")
    backfill = {
        "seed-ahead": _state("seed-ahead", 3, start=T0),
        "seed-behind": _state("seed-behind", 3, start=T0 + 200),
        "seed-ns-ahead": _state("seed-ns-ahead", 1, start=T0 + 500.5),
        "seed-ns-behind": _state("seed-ns-behind", 1, start=T0 + 500.5),
        "seed-new": _state("seed-new", 1, start=T0),
        "seed-garbled": _state("seed-garbled", 1, start=T0),
    }

    outcome = seed_online(store, client, backfill, as_of=T0 + 2_000)

    assert sorted(outcome.written) == ["seed-behind", "seed-new", "seed-ns-behind"]
    assert sorted(outcome.kept_newer) == ["seed-ahead", "seed-ns-ahead"]
    assert outcome.kept_unreadable == ["seed-garbled"]
    stored = load_states(client, layout, backfill)
    for uid in outcome.written:
        assert stored[uid] == backfill[uid]
    for uid in outcome.kept_newer:
        assert stored[uid] == live[uid]
    assert client.hget(layout.key("seed-garbled"), layout.ts_field) == b"\xff"
    # History rows go only to the users whose state was written.
    rows = store.get_online_features(
        features=[f"{HISTORY_VIEW}:orders_lifetime"],
        entity_rows=[{"user_id": u} for u in ("seed-new", "seed-ahead")],
    ).to_dict()
    assert rows["orders_lifetime"] == [1.0, None]
