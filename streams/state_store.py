"""Per-user feature state in Redis, shared by the worker and the backfill seeding.

One string key per user. The worker reads the states of a micro-batch with one MGET
and writes them back with one pipelined MSET, after the features are online and
before the batch's offsets are acknowledged.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis

from streams.user_state import UserState

KEY_PREFIX = "segscore:state:"


def state_key(user_id: str) -> str:
    """The Redis key of one user's state."""
    return KEY_PREFIX + user_id


def load_states(client: redis.Redis, user_ids: Iterable[str]) -> dict[str, UserState]:
    """States of ``user_ids``; users never seen get a fresh state."""
    ids = list(user_ids)
    if not ids:
        return {}
    blobs = client.mget([state_key(u) for u in ids])
    return {u: UserState.from_bytes(b) for u, b in zip(ids, blobs, strict=True)}


def save_states(
    client: redis.Redis, states: dict[str, UserState], chunk: int = 5000
) -> None:
    """Write states back (one MSET per ``chunk`` users)."""
    items = list(states.items())
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(items), chunk):
        pipe.mset({state_key(u): s.to_bytes() for u, s in items[start : start + chunk]})
    pipe.execute()
