"""The states' outboxes: live segment changes and fired triggers, produced.

A record is written into its user's state in the same ``HSET`` as whatever made
it (see :mod:`streams.live_segments` and :mod:`streams.triggers`); here it is
produced to its topic, keyed by user, and only once the broker has them all are
the outboxes emptied (one more state write). A crash before the produce leaves
the records in the stored state, and they go out when the state is next loaded
and written; a crash between the produce and the clear sends them again with the
same ``id``, which consumers use to deduplicate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis

from core.store.state_store import StateLayout, WriteGuard, save_states
from core.user_state import UserState

Retry = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]


def pending(states: dict[str, UserState]) -> dict[str, UserState]:
    """The states holding records not produced yet."""
    return {u: s for u, s in states.items() if s.segment_outbox or s.rules.outbox}


async def send(
    outbox: dict[str, UserState], changes_topic: Any, triggers_topic: Any
) -> None:
    """Produce every pending record (Faust-like ``send``), keyed by user; wait."""
    futures = []
    for user, state in outbox.items():
        key = user.encode()
        if changes_topic is not None:
            for record in state.segment_outbox:
                futures.append(
                    await changes_topic.send(key=key, value=orjson.dumps(record))
                )
        if triggers_topic is not None:
            for record in state.rules.outbox:
                futures.append(
                    await triggers_topic.send(key=key, value=orjson.dumps(record))
                )
    await asyncio.gather(*futures)


def clear(
    client: redis.Redis,
    layout: StateLayout,
    outbox: dict[str, UserState],
    guard: WriteGuard | None = None,
) -> None:
    """Empty produced outboxes, in the states (the worker's cache) and in Redis.

    Raises:
        WriteFenced: ``guard`` refused the write (the caller drops its cache).
    """
    for state in outbox.values():
        state.segment_outbox = ()
        state.rules.outbox = ()
    save_states(client, layout, outbox, guard=guard)


async def deliver(
    outbox: dict[str, UserState],
    changes_topic: Any,
    triggers_topic: Any,
    client: redis.Redis,
    layout: StateLayout,
    retry: Retry,
    guard: WriteGuard | None = None,
) -> tuple[int, int]:
    """Produce the outboxes' records, then empty them; each step retried.

    A topic that is None belongs to a feature that is off, which makes no records.
    ``guard`` fences the write that empties them, as the states' own writes.

    Returns:
        How many segment changes and triggers were produced.
    """
    changes = sum(len(s.segment_outbox) for s in outbox.values())
    fired = sum(len(s.rules.outbox) for s in outbox.values())
    await retry("outbox-send", lambda: send(outbox, changes_topic, triggers_topic))
    await retry(
        "outbox-clear", lambda: asyncio.to_thread(clear, client, layout, outbox, guard)
    )
    return (changes if changes_topic is not None else 0), (
        fired if triggers_topic is not None else 0
    )
