"""Feast serves read-time features derived from the stored ``state`` blob.

The on-demand view ``user_live_features`` derives the stream and history groups
from the blob when read; the models' feature services project it, so the SDK and
``feast serve`` return, for a user known only from the stream, exactly the values
``/score`` feeds its models.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from feast import FeatureStore
from feast.transformation.udf_rehydrate import rehydrate_udf_from_source

from core.events import Event, EventType
from core.feature_catalog import (
    PROPENSITY_FEATURES,
    SEGMENTATION_FEATURES,
    stored_features,
)
from core.feature_math import history_features, stream_features
from core.names import LIVE_VIEW, offline_service
from core.scoring import ONLINE_FEATURES, online_columns, with_read_time_features
from core.store.feast_config import feature_store
from core.store.online_reader import OnlineReader, resolve_views
from core.store.state_store import StateLayout, save_states
from core.user_state import UserState, apply_event
from feature_repo.apply import apply_repo
from feature_repo.live_features import (
    LIVE_FEATURES,
    live_state_features,
    user_live_features,
)
from infra import local_stack, processes
from infra.settings import Settings
from segscore.bench.serve_stack import start_feast_server

NAMES = [spec.name for spec in LIVE_FEATURES]
REFS = [f"{LIVE_VIEW}:{name}" for name in NAMES]
MINUTE = 60.0
DAY = 86_400.0
FEAST_START_TIMEOUT = 90.0


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


def _derived(state: UserState, as_of: float) -> dict[str, float | None]:
    """Both groups the view derives, straight from the feature math."""
    return {**stream_features(state, as_of), **history_features(state, as_of)}


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
    want = _derived(state, before)
    # The read happened between ``before`` and ``after``, which agree on every step.
    assert _steps(_derived(state, after)) == _steps(want)
    _assert_matches(got, 0, want)
    assert got["events_1h"][0] == 1.0
    assert got["events_24h"][0] == 2.0
    assert got["cart_abandonments_24h"][0] == 1.0
    assert got["distinct_categories_24h"][0] == 2.0
    assert got["avg_viewed_price_24h"][0] == 30.0
    assert got["last_event_ts"][0] == state.last_event_ts
    assert got["last_purchase_ts"][0] is None
    # History from the same state: 90 minutes of it, no purchase.
    assert got["orders_90d"][0] == 0.0
    assert got["sessions_30d"][0] == 2.0
    assert got["product_views_30d"][0] == 1.0
    assert got["first_seen_ts"][0] == state.first_seen_ts

    # A user the worker never wrote reads as an empty state: zeros, no timestamps.
    _assert_matches(got, 1, _derived(UserState(), before))
    assert got["last_event_ts"][1] is None
    assert got["first_seen_ts"][1] is None


def test_live_view_derives_lifetime_history_from_the_state(
    stack_settings: Settings,
) -> None:
    # Purchases 300 and 100 days back: out of every window, in the lifetime.
    store, redis_url = _store(stack_settings)
    now = time.time()
    uid = "live-lifetime"
    state = UserState()
    for n, (kind, days_ago, revenue) in enumerate(
        [
            (EventType.PURCHASE, 300, 12.0),
            (EventType.PURCHASE, 100, 30.0),
            (EventType.PAGE_VIEW, 10 * MINUTE / DAY, None),
        ]
    ):
        extra = {"revenue": revenue} if revenue else {}
        event = _event(uid, n, kind, now - days_ago * DAY, **extra)
        apply_event(state, event, 600, offset=n)
    save_states(redis.Redis.from_url(redis_url), StateLayout.of(store), {uid: state})

    before = time.time()
    got = store.get_online_features(
        features=REFS, entity_rows=[{"user_id": uid}]
    ).to_dict()

    _assert_matches(got, 0, _derived(state, before))
    assert got["orders_90d"][0] == 0.0
    assert got["orders_lifetime"][0] == 2.0
    assert got["revenue_lifetime"][0] == 42.0
    assert got["purchase_days_lifetime"][0] == 2.0
    assert got["purchase_gap_mean_days"][0] == pytest.approx(200.0, abs=1.0)
    assert got["first_purchase_ts"][0] == state.first_purchase_ts


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
        user_live_features.udf_string, preferred_name=live_state_features.__name__
    )
    assert udf is not None
    out = udf({"state": [None]})
    # Short names, then the "<view>__" aliases full_feature_names=True selects by.
    assert list(out) == NAMES + [f"{LIVE_VIEW}__{name}" for name in NAMES]
    assert out["events_7d"] == out[f"{LIVE_VIEW}__events_7d"] == [0.0]
    assert out["orders_90d"] == out[f"{LIVE_VIEW}__orders_90d"] == [0.0]


def _stream_only_state(uid: str, now: float) -> UserState:
    """First seen 40 minutes ago, two purchases since, never backfilled.

    Every event lies minutes away from the window edges that could move between
    this test's reads, and the purchases give every timestamp a value.
    """
    state = UserState()
    kinds = [
        (EventType.PRODUCT_VIEW, now - 40 * MINUTE),
        (EventType.ADD_TO_CART, now - 38 * MINUTE),
        (EventType.PURCHASE, now - 35 * MINUTE),
        (EventType.PURCHASE, now - 20 * MINUTE),
        (EventType.PAGE_VIEW, now - 5 * MINUTE),
    ]
    for n, (kind, ts) in enumerate(kinds):
        extra = {"revenue": 30.0} if kind is EventType.PURCHASE else {}
        event = _event(
            uid, n, kind, ts, price=15.0, category="bags", session_id="s1", **extra
        )
        apply_event(state, event, 600, offset=n)
    return state


def _scoring_columns(
    store: FeatureStore, redis_url: str, users: list[str], as_of: float
) -> dict[str, list]:
    """What /score feeds its models: its own online read, derived as of ``as_of``."""
    views = resolve_views(store, online_columns(ONLINE_FEATURES))

    async def read() -> dict[str, list]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            reader = OnlineReader(client, StateLayout.of(store), views)
            return await reader.read_columns(users)
        finally:
            await client.aclose()

    return dict(with_read_time_features(asyncio.run(read()), len(users), as_of))


def _assert_same_as_scoring(
    served: dict[str, float | None], scoring: dict[str, float | None]
) -> None:
    """Every value present and equal; only the decayed score may drift a hair.

    A user whose purchases all fall on one day has no previous purchase day:
    that one value is missing, in both reads alike (``_steps`` compares it).
    """
    assert served.keys() == scoring.keys()
    missing = [
        name
        for name, value in served.items()
        if value is None and name != "previous_purchase_ts"
    ]
    assert not missing, missing
    if "engagement_score" in scoring:
        assert served["engagement_score"] == pytest.approx(
            scoring["engagement_score"], rel=1e-4
        )
    assert _steps(served) == _steps(scoring)


def test_model_services_return_what_scoring_uses_for_a_stream_only_user(
    stack_settings: Settings,
) -> None:
    store, redis_url = _store(stack_settings)
    uid = "live-stream-only"
    now = time.time()
    state = _stream_only_state(uid, now)
    save_states(redis.Redis.from_url(redis_url), StateLayout.of(store), {uid: state})

    served_by: dict[str, dict[str, float | None]] = {}
    for service, model in (
        ("propensity", PROPENSITY_FEATURES),
        ("segmentation", SEGMENTATION_FEATURES),
    ):
        names = stored_features(model)
        got = store.get_online_features(
            features=store.get_feature_service(service), entity_rows=[{"user_id": uid}]
        ).to_dict()
        scoring = _scoring_columns(store, redis_url, [uid], time.time())
        served = served_by[service] = {name: got[name][0] for name in names}
        _assert_same_as_scoring(served, {name: scoring[name][0] for name in names})
        # Training reads the same names offline, from the batch views.
        offline = store.get_feature_service(offline_service(service))
        offline_names = [
            f.name for p in offline.feature_view_projections for f in p.features
        ]
        assert sorted(offline_names) == sorted(names)

    # The user's real history, not the population's: no backfill ever saw them.
    propensity = served_by["propensity"]
    assert propensity["orders_90d"] == 2.0
    assert propensity["revenue_90d"] == 60.0
    assert propensity["first_seen_ts"] == state.first_seen_ts
    assert served_by["segmentation"]["orders_90d"] == 2.0


def test_feast_serve_returns_what_scoring_uses_for_a_stream_only_user(
    stack_settings: Settings, tmp_path: Path
) -> None:
    store, redis_url = _store(stack_settings)
    uid = "live-served"
    now = time.time()
    state = _stream_only_state(uid, now)
    save_states(redis.Redis.from_url(redis_url), StateLayout.of(store), {uid: state})

    port = local_stack.free_port()
    server = start_feast_server(stack_settings, redis_url, port, tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        processes.wait_ready(f"{url}/health", server, FEAST_START_TIMEOUT)
        response = httpx.post(
            f"{url}/get-online-features",
            json={"feature_service": "propensity", "entities": {"user_id": [uid]}},
            timeout=30,
        )
    finally:
        processes.stop(server)
    assert response.status_code == 200, response.text
    body = response.json()
    served = {
        name: result["values"][0]
        for name, result in zip(
            body["metadata"]["feature_names"], body["results"], strict=True
        )
    }
    assert served.pop("user_id") == uid

    scoring = _scoring_columns(store, redis_url, [uid], time.time())
    names = stored_features(PROPENSITY_FEATURES)
    _assert_same_as_scoring(served, {name: scoring[name][0] for name in names})
    assert served["orders_90d"] == 2.0
    assert served["first_seen_ts"] == state.first_seen_ts
