"""Feast serves read-time stream features derived from the stored ``state`` blob."""

from __future__ import annotations

import time

import pytest
import redis
from feast import FeatureStore
from feast.transformation.udf_rehydrate import rehydrate_udf_from_source

from feature_repo.live_features import (
    LIVE_VIEW,
    live_stream_features,
    user_live_features,
)
from infra import local_stack
from infra.feast_config import apply_repo, feature_store
from infra.settings import Settings
from streams.events import Event, EventType
from streams.feature_catalog import STREAM_FEATURES
from streams.feature_math import stream_features
from streams.state_store import StateLayout, save_states
from streams.user_state import UserState, apply_event

NAMES = [spec.name for spec in STREAM_FEATURES]
REFS = [f"{LIVE_VIEW}:{name}" for name in NAMES]
MINUTE = 60.0


def _event(uid: str, n: int, kind: EventType, ts: float, **extra: object) -> Event:
    return Event.model_validate(
        {
            "event_id": f"{uid}-{n}",
            "user_id": uid,
            "event_type": kind,
            "ts": ts * 1000,  # numeric event times are epoch milliseconds
            **extra,
        }
    )


def _state(uid: str, now: float) -> UserState:
    """A cart add 90 minutes ago and a view 10 minutes ago.

    Both lie far from every window edge, so a few seconds between this test's clock
    and the read's do not change any windowed value.
    """
    state = UserState()
    events = [
        _event(
            uid,
            0,
            EventType.ADD_TO_CART,
            now - 90 * MINUTE,
            price=20.0,
            category="shoes",
            session_id="s1",
        ),
        _event(
            uid,
            1,
            EventType.PRODUCT_VIEW,
            now - 10 * MINUTE,
            price=30.0,
            category="hats",
            session_id="s2",
        ),
    ]
    for offset, event in enumerate(events):
        apply_event(state, event, 600, offset=offset)
    return state


def _store(settings: Settings) -> tuple[FeatureStore, str]:
    stack = local_stack.current(settings)
    store = feature_store(settings, stack.redis_url)
    apply_repo(store)
    assert store.get_on_demand_feature_view(LIVE_VIEW).name == LIVE_VIEW
    return store, stack.redis_url


def _steps(features: dict[str, float | None]) -> dict[str, float | None]:
    # engagement_score decays continuously, so it moves by a hair between the
    # expectation's instant and the read's; every other value is a step function.
    return {k: v for k, v in features.items() if k != "engagement_score"}


def _assert_matches(
    got: dict[str, list], row: int, want: dict[str, float | None]
) -> None:
    """Row ``row`` of ``got`` equals ``want``; only the decayed score may drift."""
    values = {name: got[name][row] for name in NAMES}
    assert values["engagement_score"] == pytest.approx(
        want["engagement_score"], rel=1e-4
    )
    assert _steps(values) == _steps(want)


def test_live_view_derives_features_at_read_time(stack_settings: Settings) -> None:
    store, redis_url = _store(stack_settings)
    now = time.time()
    state = _state("live-a", now)
    save_states(
        redis.Redis.from_url(redis_url), StateLayout.of(store), {"live-a": state}
    )

    before = time.time()
    got = store.get_online_features(
        features=REFS,
        entity_rows=[{"user_id": "live-a"}, {"user_id": "live-never"}],
    ).to_dict()
    after = time.time()

    assert got["user_id"] == ["live-a", "live-never"]
    want = stream_features(state, before)
    # The read happened between ``before`` and ``after``, which agree on every step.
    assert _steps(stream_features(state, after)) == _steps(want)
    _assert_matches(got, 0, want)
    assert got["events_1h"][0] == 1.0
    assert got["events_24h"][0] == 2.0
    assert got["cart_abandonments_24h"][0] == 1.0
    assert got["distinct_categories_24h"][0] == 2.0
    assert got["avg_viewed_price_24h"][0] == 30.0
    assert got["last_event_ts"][0] == state.last_event_ts
    assert got["last_purchase_ts"][0] is None

    # A user the worker never wrote reads as an empty state: zeros, no timestamps.
    _assert_matches(got, 1, stream_features(UserState(), before))
    assert got["last_event_ts"][1] is None


def test_live_view_under_both_namings(stack_settings: Settings) -> None:
    store, redis_url = _store(stack_settings)
    now = time.time()
    state = _state("live-b", now)
    save_states(
        redis.Redis.from_url(redis_url), StateLayout.of(store), {"live-b": state}
    )

    refs = [f"{LIVE_VIEW}:events_24h", "user_stream_features:state"]
    rows = [{"user_id": "live-b"}]

    short = store.get_online_features(features=refs, entity_rows=rows).to_dict()
    full = store.get_online_features(
        features=refs, entity_rows=rows, full_feature_names=True
    ).to_dict()

    assert set(short) == {"user_id", "events_24h", "state"}
    assert set(full) == {
        "user_id",
        f"{LIVE_VIEW}__events_24h",
        "user_stream_features__state",
    }
    assert short["events_24h"] == full[f"{LIVE_VIEW}__events_24h"] == [2.0]
    assert UserState.from_bytes(short["state"][0]) == (
        UserState.from_bytes(state.to_bytes(with_dedupe=False))
    )


def test_udf_survives_feast_source_rehydration() -> None:
    # Registry readers (get_online_features, feast serve) rebuild the UDF by exec-ing
    # its source text with almost empty globals; dill is only a silent fallback.
    udf = rehydrate_udf_from_source(
        user_live_features.udf_string, preferred_name=live_stream_features.__name__
    )
    assert udf is not None
    out = udf({"state": [None]})
    # Short names, then the "<view>__" aliases full_feature_names=True selects by.
    assert list(out) == NAMES + [f"{LIVE_VIEW}__{name}" for name in NAMES]
    assert out["events_7d"] == out[f"{LIVE_VIEW}__events_7d"] == [0.0]
