"""One event log, two paths: Kafka -> Faust worker -> Redis/Feast, and the backfill.

Every feature of every user must agree as of the same instant (floats within 1e-9),
including events that arrive out of order within the allowed lateness.
"""

from __future__ import annotations

import random
import time

import redis

from core.event_files import events_frame
from core.feature_catalog import STATE_FEATURE
from core.feature_math import history_features, stream_features
from core.names import STREAM_VIEW
from core.store.feast_config import feature_store
from core.store.state_store import StateLayout, load_states
from core.user_state import UserState
from feature_repo.apply import apply_repo
from infra import local_stack, processes
from infra.settings import Settings
from segscore.producer import produce_events
from segscore.simulator import simulate
from tests.support.feature_checks import assert_features_equal
from tests.support.processes import eventually
from training.backfill import backfill


def _shuffle_nearby(events: list, seed: int, within: float = 120.0) -> list:
    """Swap some neighbouring events of a user that lie within ``within`` seconds."""
    rng = random.Random(seed)
    out = list(events)
    for i in range(len(out) - 1):
        a, b = out[i], out[i + 1]
        if b.ts - a.ts < within and rng.random() < 0.3:
            out[i], out[i + 1] = b, a
    return out


def test_stream_and_backfill_agree_on_every_feature(stack_settings: Settings) -> None:
    settings = stack_settings
    stack = local_stack.current(settings)
    store = feature_store(settings, stack.redis_url)
    apply_repo(store)
    end = time.time() - 60
    sim = simulate(120, end - 3 * 86_400, end, seed=101, first_user=900_000)
    log = _shuffle_nearby(sim.events, seed=5)
    expected = backfill(
        events_frame(log), [], lateness_seconds=settings.allowed_lateness_seconds
    ).states
    assert len(expected) > 80  # users with at least one event in three days

    produce_events(stack.kafka_broker, settings.events_topic, log)
    worker = processes.start_worker(settings, name="worker-parity")
    client = redis.Redis.from_url(stack.redis_url)
    try:

        def caught_up() -> dict[str, UserState] | None:
            states = load_states(client, StateLayout.of(store), expected)
            done = all(
                states[u].last_event_ts == expected[u].last_event_ts for u in expected
            )
            return states if done else None

        online_states = eventually(caught_up, 120, "the worker to apply the log")
    finally:
        processes.stop(worker)

    instant = end + 30
    users = sorted(expected)
    online = store.get_online_features(
        features=[f"{STREAM_VIEW}:{STATE_FEATURE}"],
        entity_rows=[{"user_id": u} for u in users],
    ).to_dict()
    for i, uid in enumerate(users):
        want = expected[uid]
        # The worker's state store and the blob in Feast, read as of one instant.
        feast_state = UserState.from_bytes(online[STATE_FEATURE][i])
        for state in (online_states[uid], feast_state):
            assert_features_equal(
                stream_features(state, instant), stream_features(want, instant)
            )
            assert_features_equal(
                history_features(state, instant), history_features(want, instant)
            )
    # The log exercises the lifetime gap statistics, not only single purchases.
    assert any(expected[u].purchase_days_lifetime >= 2 for u in users)
