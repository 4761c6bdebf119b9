"""A user's last events, kept by the stream worker for the profile endpoint.

One Redis list per user (``segscore:recent:<user_id>``), newest first, each item
the event in its wire form (:meth:`core.events.Event.to_json`). The worker pushes
a batch's applied events and trims the list to ``profile_recent_events`` in the
same pipeline as the user's state, so the list is bounded whatever the traffic,
and it expires with the user's feature hash.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import orjson
import redis

from core.events import Event

PREFIX = b"segscore:recent:"


def recent_key(user_id: str) -> bytes:
    """The list holding ``user_id``'s last events."""
    return PREFIX + user_id.encode()


def stage_recent(
    stage: Callable[..., Any],
    events: Iterable[Event],
    keep: int,
    ttl_seconds: int | None = None,
) -> None:
    """Stage pushes of ``events`` (oldest first) onto their users' lists, trimmed.

    ``stage`` takes raw command arguments (a pipeline's
    ``pipeline_execute_command``). Nothing is staged when ``keep`` is 0.
    """
    if keep <= 0:
        return
    by_user: dict[str, list[bytes]] = {}
    for event in events:
        by_user.setdefault(event.user_id, []).append(event.to_json())
    for user, items in by_user.items():
        key = recent_key(user)
        stage(b"LPUSH", key, *items[-keep:])
        stage(b"LTRIM", key, 0, keep - 1)
        if ttl_seconds:
            stage(b"EXPIRE", key, ttl_seconds)


def read_recent(client: redis.Redis, user_id: str, n: int) -> list[dict[str, Any]]:
    """Up to ``n`` of the user's last events, newest first (``ts`` in ms)."""
    if n <= 0:
        return []
    return [orjson.loads(item) for item in client.lrange(recent_key(user_id), 0, n - 1)]
