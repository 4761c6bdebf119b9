"""Seed the online side from a backfill: worker state, stream and history features.

After a backfill the online store must hold what the worker would have written had
it seen the same history, so live events continue from there instead of from zero.
"""

from __future__ import annotations

import redis
from feast import FeatureStore

from streams.feature_math import history_features
from streams.online_sink import push_online, write_history_online
from streams.processor import online_row
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

    Features are computed as of ``as_of`` (so windows are right now, not at the
    user's last event), but stream rows keep the newest event time as their
    timestamp: Feast's Redis store drops writes older than what it holds, and the
    worker's next write for the user is stamped with that user's event time.
    """
    save_states(client, states)
    users = [u for u, s in states.items() if s.last_event_ts is not None]
    for start in range(0, len(users), chunk):
        stream_rows, history_rows = [], []
        for uid in users[start : start + chunk]:
            state = states[uid]
            stream_rows.append(online_row(uid, state, as_of))
            history = history_features(state, as_of)
            history_rows.append({"user_id": uid, "event_timestamp": as_of, **history})
        push_online(store, stream_rows)
        write_history_online(store, history_rows)
    return len(users)
