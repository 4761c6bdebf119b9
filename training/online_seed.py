"""Seed the online side from a backfill: worker state, stream and history features.

After a backfill the online store must hold what the worker would have written had
it seen the same history, so live events continue from there instead of from zero.
"""

from __future__ import annotations

import redis
from feast import FeatureStore

from streams.feature_math import history_features, stream_features
from streams.online_sink import push_online, write_history_online
from streams.state_store import save_states
from streams.user_state import UserState


def seed_online(
    store: FeatureStore,
    client: redis.Redis,
    states: dict[str, UserState],
    as_of: float,
    chunk: int = 20_000,
) -> int:
    """Write states, latest stream features and history features; returns users.

    Stream features are taken as of each user's newest event, exactly as the worker
    computes them; history features as of ``as_of``.
    """
    save_states(client, states)
    users = [u for u, s in states.items() if s.last_event_ts is not None]
    for start in range(0, len(users), chunk):
        stream_rows, history_rows = [], []
        for uid in users[start : start + chunk]:
            state = states[uid]
            last = state.last_event_ts
            features = stream_features(state, last)
            stream_rows.append({"user_id": uid, "event_timestamp": last, **features})
            history = history_features(state, as_of)
            history_rows.append({"user_id": uid, "event_timestamp": as_of, **history})
        push_online(store, stream_rows)
        write_history_online(store, history_rows)
    return len(users)
