"""Seed the online side from a backfill: every user's stream state and history features.

After a backfill the online store must hold what the worker would have written had
it seen the same history, so live events continue from there instead of from zero.
"""

from __future__ import annotations

import redis
from feast import FeatureStore

from core.feature_math import history_features
from core.store.online_sink import write_history_online
from core.store.state_store import StateLayout, save_states
from core.user_state import UserState


def seed_online(
    store: FeatureStore,
    client: redis.Redis,
    states: dict[str, UserState],
    as_of: float,
    chunk: int = 20_000,
) -> int:
    """Write states (what the worker continues from) and history features.

    History features are computed as of ``as_of``; stream windows need no such
    choice, readers derive them from the state when they read.
    """
    layout = StateLayout.of(store)
    users = [u for u, s in states.items() if s.last_event_ts is not None]
    for start in range(0, len(users), chunk):
        part = users[start : start + chunk]
        save_states(client, layout, {uid: states[uid] for uid in part})
        history_rows = [
            {
                "user_id": uid,
                "event_timestamp": as_of,
                **history_features(states[uid], as_of),
            }
            for uid in part
        ]
        write_history_online(store, history_rows)
    return len(users)
