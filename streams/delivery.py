"""Producing the outboxes' records in the background (see :mod:`streams.outbox`).

The worker hands each batch's new records to :class:`Deliveries` and goes on
with the next batch while the broker acknowledges them; the consumer waits for
them (:meth:`Deliveries.settle`) before it commits offsets, so a committed
batch's records are on the broker.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any

from core.user_state import UserState
from streams.metrics import WorkerMetrics
from streams.outbox import Outbox, Pending, send

# Deliveries nobody awaits while later batches are handled; beyond this many, a
# batch waits for the oldest (backpressure when the broker is slow or away).
MAX_DELIVERIES = 4

Retry = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]


class Deliveries:
    """The deliveries under way, and what they count when they complete."""

    def __init__(
        self,
        topics: Callable[[], tuple[Any, Any]],
        retry: Retry,
        counts: Counter[str],
        metrics: WorkerMetrics,
    ) -> None:
        self.outbox = Outbox()
        self._topics = topics  # (segment changes, triggers): None when off
        self._retry = retry
        self._counts = counts
        self._metrics = metrics
        self._under_way: deque[asyncio.Future[None]] = deque()

    async def start(self, states: dict[str, UserState]) -> None:
        """Produce the records of ``states`` not already on their way, in the
        background; wait only while :data:`MAX_DELIVERIES` are unfinished."""
        items = self.outbox.take_new(states)
        if items:
            self._under_way.append(asyncio.ensure_future(self._deliver(items)))
        while len(self._under_way) > MAX_DELIVERIES:
            await self._under_way.popleft()

    async def settle(self) -> None:
        """Wait until every record handed over so far is acknowledged."""
        while self._under_way:
            await self._under_way[0]
            self._under_way.popleft()

    async def _deliver(self, items: list[Pending]) -> None:
        changes_topic, triggers_topic = self._topics()
        await self._retry(
            "outbox-send", lambda: send(items, changes_topic, triggers_topic)
        )
        self.outbox.acknowledged(items)
        fired = sum(1 for item in items if item.trigger)
        # A record of a feature now off (its topic None) was dropped, not sent.
        changes = len(items) - fired if changes_topic is not None else 0
        fired = fired if triggers_topic is not None else 0
        self._counts["segment_changes"] += changes
        self._counts["triggers"] += fired
        self._metrics.activations.inc(changes, kind="segment_change")
        self._metrics.activations.inc(fired, kind="trigger")
