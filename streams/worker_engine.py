"""The worker's I/O around :mod:`streams.processor`: Redis state, Feast push, DLQ."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import orjson
import redis

from infra.feast_config import feature_store
from infra.settings import Settings
from streams.events import Event, Rejection
from streams.online_sink import push_online
from streams.processor import apply_batch, parse_batch
from streams.state_store import load_states, save_states

log = logging.getLogger("segscore.worker")
T = TypeVar("T")

MAX_BACKOFF_SECONDS = 5.0


def dlq_record(
    rejection: Rejection, partition: int | None, offset: int | None
) -> bytes:
    """The DLQ message for a rejected event: reason, detail, the raw input, origin."""
    return orjson.dumps(
        {
            "reason": rejection.reason,
            "detail": rejection.detail,
            "raw": rejection.raw,
            "partition": partition,
            "offset": offset,
            "rejected_at": time.time(),
        }
    )


def late_rejection(event: Event, lateness_seconds: int) -> Rejection:
    """A rejection for an event beyond the allowed lateness."""
    return Rejection(
        reason="late",
        detail=f"more than {lateness_seconds}s older than the user's newest event",
        raw=event.to_json().decode(),
    )


class FeatureEngine:
    """Holds the worker's clients and counters; handles one batch at a time."""

    def __init__(self, settings: Settings, redis_url: str) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self.counts: Counter[str] = Counter()
        self._redis: redis.Redis | None = None
        self._store = None

    @property
    def redis(self) -> redis.Redis:
        """The state-store client (created on first use, not at import)."""
        if self._redis is None:
            self._redis = redis.Redis.from_url(
                self.redis_url, socket_timeout=2.0, socket_connect_timeout=1.0
            )
        return self._redis

    @property
    def store(self):
        """The Feast store used for pushes (created on first use)."""
        if self._store is None:
            self._store = feature_store(self.settings, self.redis_url)
        return self._store

    async def handle(self, batch: Sequence[Any], dlq_topic: Any) -> None:
        """Process one batch of Faust events; returns only once it is written."""
        parsed = parse_batch(
            [e.value for e in batch],
            max_future_seconds=self.settings.max_future_seconds,
            max_bytes=self.settings.max_event_bytes,
        )
        for index, rejection in parsed.rejections:
            self.counts[f"dlq:{rejection.reason}"] += 1
            source = batch[index]
            record = dlq_record(
                rejection, source.message.partition, source.message.offset
            )
            await dlq_topic.send(key=source.key, value=record)

        if parsed.events:
            result = await self._retry(
                "state+features", lambda: asyncio.to_thread(self._write, parsed.events)
            )
            self.counts.update(result.counts)
            for event in result.late:
                self.counts["dlq:late"] += 1
                rejection = late_rejection(
                    event, self.settings.allowed_lateness_seconds
                )
                await dlq_topic.send(
                    key=event.user_id.encode(), value=dlq_record(rejection, None, None)
                )
        self.counts["batches"] += 1

    def _write(self, events: list[Event]):
        users = dict.fromkeys(e.user_id for e in events)
        states = load_states(self.redis, users)
        result = apply_batch(events, states, self.settings.allowed_lateness_seconds)
        # Features first, states second: a crash in between re-applies the batch
        # to the old state on replay, which recomputes the same features.
        push_online(self.store, result.rows)
        save_states(self.redis, {u: states[u] for u in users})
        return result

    async def _retry(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        delay = 0.1
        while True:
            try:
                return await call()
            except (redis.RedisError, OSError) as exc:
                self.counts[f"retry:{what}"] += 1
                log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
