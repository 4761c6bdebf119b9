"""Fencing: a worker dropped from its group without a revoke cannot write states.

A worker frozen past its session timeout (a GC or VM pause, SIGSTOP, a stalled
host) is removed from the consumer group without hearing of it: no revoke
callback runs, so it keeps its cached states and its batch in flight. Another
worker gets its partitions, loads their states from Redis and writes newer ones.
When the frozen one wakes, it would finish its batch on its stale cache and
write states older than the new owner's: events the new owner applied would be
lost from Redis (and the owner's offsets already say they are done).

The group's generation says who is right. Each join gives a member the group's
new generation, and on every assignment the worker raises a fence per partition
in Redis (hash ``segscore:fence:<group>:<topic>:<partition>``, field
``generation``) to its generation.
Every state write of the worker (:func:`core.store.state_store.save_states` with
a :class:`~core.store.guarded_write.WriteGuard`) goes in Redis transactions of a
bounded size (:mod:`core.store.guarded_write`): each ``WATCH``es the fences of
all the worker's assigned partitions, reads them, and writes nothing if one is
above the worker's generation (it raises the ones below it, so a fence that
could not be raised at assignment is raised by the first write). A fence raised
between the read and the ``EXEC`` aborts the transaction, which is tried again
and then refused. So a zombie's chunk of a write lands either before the new
owner's fence (and the owner, which loads after it, sees it and replays its
events as duplicates) or not at all. All assigned partitions are checked, not
only the batch's: with eager rebalancing one fence above the generation means
the whole assignment is stale. A worker owns a few partitions; reading their
fences costs one round trip per chunk.

A refused batch (:class:`~core.store.guarded_write.WriteFenced`) is neither retried
(it would be refused forever) nor poison (its events are fine; the new owner
applies them): the consumer drops every cached state, forgets its uncommitted
offsets (they belong to the new owner), rewinds to the committed offsets, and
asks to rejoin the group, where it gets a new generation and assignment.

Generations that go backwards: a broker that loses the group's state (the
bundled tansu keeps it in memory, so ``segscore down`` / ``up`` does) starts
the group again at generation 0 while Redis keeps the old fences. A worker
assigned a partition whose fence is above its generation cannot tell that from a
stale assignment, so it asks the broker: it commits the partition's committed
offset again, which the broker accepts only from a member of the current
generation. Accepted, the fence is set to the worker's generation if it still
holds the value read (compare-and-set, so a fence raised meanwhile by a newer
owner stays). Refused, the group has moved on and the worker rejoins anyway.

Not for Redis Cluster: a transaction's keys (the fences and the states) lie in
other hash slots. The stack runs a single Redis.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import redis
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from core.store.guarded_write import WriteFenced, WriteGuard
from streams.state_cache import Partition

if TYPE_CHECKING:
    from streams.worker_engine import FeatureEngine

__all__ = [
    "Fencing",
    "WriteFenced",
    "assign_fences",
    "fence_generation",
    "fence_key",
    "group_generation",
]

log = logging.getLogger("segscore.worker")

FENCE_FIELD = b"generation"  # the fence hash's one field (see WriteGuard)

# KEYS: fences; ARGV[1]: a generation. Raises each fence below it to it; returns
# every fence's value afterwards.
_RAISE = """
local out = {}
for i = 1, #KEYS do
  local raw = redis.call('HGET', KEYS[i], 'generation')
  local fence = raw and tonumber(raw)
  if not fence or fence < tonumber(ARGV[1]) then
    redis.call('HSET', KEYS[i], 'generation', ARGV[1])
    fence = tonumber(ARGV[1])
  end
  out[i] = fence
end
return out
"""
# KEYS[1]: a fence; ARGV: the value read, the new value. 1 if set, 0 if it moved.
_LOWER = """
if redis.call('HGET', KEYS[1], 'generation') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'generation', ARGV[2])
  return 1
end
return 0
"""


def fence_generation(client: redis.Redis, key: bytes) -> int | None:
    """The generation fence ``key`` holds (None: no fence)."""
    raw = client.hget(key, FENCE_FIELD)
    return None if raw is None else int(raw)


def fence_key(group: str, topic: str, partition: int) -> bytes:
    """The Redis key of one partition's fence, for one consumer group.

    Per group: a group renamed (a new group starts at generation 0 again) or a
    second group on the same topic does not inherit another's fences.
    """
    return f"segscore:fence:{group}:{topic}:{partition}".encode()


def group_generation(consumer: Any) -> int | None:
    """The generation of the consumer's last join, or None if it has none.

    aiokafka has no public accessor; its group coordinator keeps it as
    ``generation`` (-1 when it has none, e.g. after it found itself dropped).
    """
    coordinator = getattr(consumer, "_coordinator", None)
    generation = getattr(coordinator, "generation", None)
    if not isinstance(generation, int) or generation < 0:
        return None
    return generation


def request_rejoin(consumer: Any) -> None:
    """Ask aiokafka to rejoin the group now rather than at its next heartbeat."""
    coordinator = getattr(consumer, "_coordinator", None)
    rejoin = getattr(coordinator, "request_rejoin", None)
    if rejoin is not None:
        rejoin()


class Fencing:
    """This worker's generation and the fences of the partitions it was assigned.

    Off (no guard, writes unconditional) until the first assignment with a known
    generation: a worker outside a group, or the engine in unit tests.

    Args:
        group: The consumer group (part of every fence key).
    """

    def __init__(self, group: str) -> None:
        self.group = group
        self.generation: int | None = None
        self._guard: WriteGuard | None = None
        self._warned: int | None = None  # the generation last warned about

    def guard(self) -> WriteGuard | None:
        """What every state write must pass (None while fencing is off)."""
        return self._guard

    def assigned(self, partitions: Iterable[Partition], generation: int) -> None:
        """Take a new assignment: from now on, writes are checked against it."""
        self.generation = generation
        keys = tuple(fence_key(self.group, t, p) for t, p in sorted(partitions))
        self._guard = WriteGuard(keys, generation)

    def raise_fences(self, client: redis.Redis) -> dict[bytes, int]:
        """Raise the assigned partitions' fences to the generation (blocking).

        Returns:
            The fences left above the generation, by key (none normally).
        """
        guard = self._guard
        if guard is None or not guard.fence_keys:
            return {}
        found = client.eval(
            _RAISE, len(guard.fence_keys), *guard.fence_keys, guard.generation
        )
        return {
            key: int(value)
            for key, value in zip(guard.fence_keys, found, strict=True)
            if int(value) > guard.generation
        }

    def lower(self, client: redis.Redis, key: bytes, seen: int) -> bool:
        """Set fence ``key`` to the generation if it still holds ``seen`` (blocking)."""
        assert self.generation is not None
        return bool(client.eval(_LOWER, 1, key, seen, self.generation))

    def refused(self, engine: FeatureEngine, error: WriteFenced) -> None:
        """A write was refused: drop every cached state, count, warn once."""
        dropped = len(engine.cache)
        engine.cache.clear()
        engine.outbox.forget()
        engine.counts["fenced"] += 1
        engine.metrics.fenced.inc()
        if self._warned != error.generation:
            self._warned = error.generation
            log.warning(
                "fenced: another worker owns this worker's partitions now (%s); "
                "the batch is not committed, %d cached states dropped, rejoining",
                error,
                dropped,
            )


async def assign_fences(
    consumer: Any, engine: FeatureEngine, assigned: set[TopicPartition]
) -> None:
    """On assignment: fence the partitions at this join's generation.

    Best effort: if Redis cannot be reached the first write raises the fences
    (atomically with itself), and a fence above the generation is lowered only
    once the broker has confirmed the generation (see the module docstring).
    """
    generation = group_generation(consumer)
    if generation is None:
        return
    fencing = engine.fencing
    fencing.assigned(((tp.topic, tp.partition) for tp in assigned), generation)
    try:
        above = await asyncio.to_thread(fencing.raise_fences, engine.redis)
    except redis.RedisError as exc:
        log.warning("could not raise the fences (the first write will): %s", exc)
        return
    if not above:
        return
    by_key = {fence_key(fencing.group, tp.topic, tp.partition): tp for tp in assigned}
    tps = [by_key[key] for key in above]
    try:
        offsets = {}
        for tp in tps:
            committed = await consumer.committed(tp)
            offsets[tp] = committed if committed is not None else 0
        await consumer.commit(offsets)
    except CommitFailedError:
        log.info("fences above generation %d: the group has moved on", generation)
        return
    except KafkaError as exc:
        log.warning("fences above generation %d, not confirmed: %s", generation, exc)
        return
    for key, seen in above.items():
        lowered = await asyncio.to_thread(fencing.lower, engine.redis, key, seen)
        log.warning(
            "fence %s was at generation %d, above this join's %d, which the broker "
            "confirms current (the group's generations restarted): %s",
            key.decode(),
            seen,
            generation,
            "lowered" if lowered else "moved meanwhile, kept",
        )
