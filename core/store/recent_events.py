"""A user's last events, kept by the stream worker for the profile endpoint.

One Redis list per user (``segscore:recent:<user_id>``), newest first, each item
the event in its wire form (:meth:`core.events.Event.to_json`). The worker pushes
a batch's applied events and trims the list to ``profile_recent_events`` in the
same pipeline as the user's state, so the list is bounded whatever the traffic,
and it expires with the user's feature hash.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from core.events import Event
from core.user_state import UserState

PREFIX = b"segscore:recent:"


def recent_key(user_id: str) -> bytes:
    """The list holding ``user_id``'s last events."""
    return PREFIX + user_id.encode()


def stage_recent(
    stage: Callable[..., Any],
    events: Iterable[Event],
    keep: int,
    ttl_seconds: int | None = None,
    states: Mapping[str, UserState] | None = None,
) -> None:
    """Stage pushes of ``events`` (oldest first) onto their users' lists, trimmed.

    ``stage`` takes raw command arguments (a pipeline's
    ``pipeline_execute_command``). Nothing is staged when ``keep`` is 0.

    With the users' ``states`` (the worker's), a list is trimmed only once it may
    hold ``2 * keep`` items, not at every push: a trim is a third of the
    commands per user written, and readers take the first ``keep`` anyway. A
    list is then at most ``2 * keep - 1`` long (after a state is loaded, its
    first push trims, as the count is unknown).
    """
    if keep <= 0:
        return
    by_user: dict[str, list[bytes]] = {}
    for event in events:
        by_user.setdefault(event.user_id, []).append(event.to_json())
    for user, items in by_user.items():
        key = recent_key(user)
        pushed = items[-keep:]
        stage(b"LPUSH", key, *pushed)
        state = states.get(user) if states is not None else None
        if state is None:
            stage(b"LTRIM", key, 0, keep - 1)
        else:
            untrimmed = state.recent_untrimmed
            if untrimmed is None or untrimmed + len(pushed) >= keep:
                stage(b"LTRIM", key, 0, keep - 1)
                state.recent_untrimmed = 0
            else:
                state.recent_untrimmed = untrimmed + len(pushed)
        if ttl_seconds:
            stage(b"EXPIRE", key, ttl_seconds)


def read_recent(client: redis.Redis, user_id: str, n: int) -> list[dict[str, Any]]:
    """Up to ``n`` of the user's last events, newest first (``ts`` in ms)."""
    if n <= 0:
        return []
    return [orjson.loads(item) for item in client.lrange(recent_key(user_id), 0, n - 1)]


def recent_command(user_id: str, n: int) -> tuple[bytes, bytes, int, int]:
    """The raw ``LRANGE`` reading up to ``n`` (> 0) of the user's last events.

    For a caller that sends it in a round trip of its own making (the scoring
    service reads a profile's hash fields and this list in one).
    """
    return (b"LRANGE", recent_key(user_id), 0, n - 1)


def decode_recent(items: Sequence[bytes]) -> list[dict[str, Any]]:
    """The events of an ``LRANGE`` reply, newest first (``ts`` in epoch ms).

    An item that is not a JSON object is left out rather than failing the
    reader: the list is shown to people, and one damaged item must not hide
    the rest (the worker writes only :meth:`core.events.Event.to_json`).
    """
    events = []
    for item in items:
        try:
            event = orjson.loads(item)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


async def read_recent_async(
    client: aioredis.Redis, user_id: str, n: int
) -> list[dict[str, Any]]:
    """:func:`read_recent` for asyncio callers (damaged items left out)."""
    if n <= 0:
        return []
    return decode_recent(await client.lrange(recent_key(user_id), 0, n - 1))
