"""Seed the online side from a backfill: every user's stream state and history features.

After a backfill the online store must hold what the worker would have written had
it seen the same history, so live events continue from there instead of from zero.
"""

from __future__ import annotations

from collections.abc import Mapping

import redis
from feast import FeatureStore

from core.feature_catalog import HISTORY_NAMES
from core.feature_math import feature_columns
from core.store.online_sink import write_history_online
from core.store.state_store import SeedOutcome, StateLayout, save_states_unless_newer
from core.user_state import UserState


def seed_online(
    store: FeatureStore,
    client: redis.Redis,
    states: Mapping[str, UserState],
    as_of: float,
    chunk: int = 20_000,
) -> SeedOutcome:
    """Write states (what the worker continues from) and history features.

    A stored state with a later event time than the backfill's is kept, and so is
    that user's history row. History features are computed as of ``as_of``;
    stream windows need no such choice, readers derive them from the state when
    they read.

    Returns:
        Which users were written and which kept their stored state.
    """
    layout = StateLayout.of(store)
    users = [u for u, s in states.items() if s.last_event_ts is not None]
    outcome = SeedOutcome([], [], [])
    for start in range(0, len(users), chunk):
        part = users[start : start + chunk]
        done = save_states_unless_newer(
            client, layout, {uid: states[uid] for uid in part}
        )
        outcome.written.extend(done.written)
        outcome.kept_newer.extend(done.kept_newer)
        outcome.kept_unreadable.extend(done.kept_unreadable)
        columns = feature_columns([states[uid] for uid in done.written], as_of)
        history = zip(*(columns[name] for name in HISTORY_NAMES), strict=True)
        history_rows = [
            {
                "user_id": uid,
                "event_timestamp": as_of,
                **dict(zip(HISTORY_NAMES, values, strict=True)),
            }
            for uid, values in zip(done.written, history, strict=True)
        ]
        write_history_online(store, history_rows)
    return outcome
