"""The worker's I/O around :mod:`streams.processor`: state in the online store, DLQ.

Delivery contract (what :meth:`FeatureEngine.handle` guarantees its caller, the
consumer loop in :mod:`streams.consumer`, which commits a batch's offsets only after
``handle`` returns):

- ``handle`` returns only once every message of the batch is accounted for: its
  event is folded into its user's state and that state is in the online store (one
  ``HSET`` per user, see :mod:`core.store.state_store`), or its DLQ record is delivered.
- It never gives up on a batch for an outage: errors that retrying can fix -- the
  online store unreachable, timing out, loading, read-only, out of memory (see
  :func:`is_transient`) -- and failures of the producer are retried forever with
  capped, jittered exponential backoff, counted by stage and error type. A stuck
  batch stalls the partition (lag grows; nothing is committed) instead of being lost.
- Bad input never stops it: invalid events become DLQ records with their reason.
  Any other error while loading, folding or saving states (a value the encoder
  refuses, a corrupt stored state, a Redis reply such as ``WRONGTYPE``) would
  fail the same way on every retry, so the events behind it are isolated by
  splitting the batch and sent to the DLQ as ``processing_error`` (error type and
  message); the rest of the batch is written.
- Records not on their user's own partition, or not keyed by their user id, are
  re-routed there (:mod:`streams.routing`): produced again, acknowledged by the
  broker, counted as outcome ``rerouted``, and only then acknowledged here.
- Cancellation (worker shutdown) propagates; nothing of the batch is acknowledged.

Writes are idempotent, so a batch replayed after a crash changes nothing: a user's
state and its dedupe data (recent event ids, highest source offset applied per
partition) are written together, so a replayed event is recognised as a duplicate.

States of recently seen users are kept in memory (:mod:`streams.state_cache`) so the
hot path reads Redis only for users it has not seen since it got their partition.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import redis

from core.events import Event
from core.store.recent_events import stage_recent
from core.store.state_store import StateLayout, load_states, save_states
from core.user_state import source_key
from infra.settings import Settings
from streams.delivery import Deliveries
from streams.failures import (
    PoisonBatch,
    dead_letter,
    is_transient,
    late_rejection,
    parse_isolating,
    poison_rejection,
    send_letters,
)
from streams.fencing import Fencing, WriteFenced
from streams.metrics import WorkerMetrics
from streams.outbox import drain, pending
from streams.processor import BatchResult, Parsed, Position, apply_batch
from streams.routing import Move, Router, send_moves
from streams.state_cache import Partition, StateCache
from streams.store_reset import StoreIdentity, StoreReset
from streams.triggers import StreamClocks, fire_timers

if TYPE_CHECKING:
    from core.user_state import UserState
    from streams.live_segments import LiveSegments
    from streams.triggers import Triggers

log = logging.getLogger("segscore.worker")
T = TypeVar("T")

MAX_BACKOFF_SECONDS = 5.0
FIRST_BACKOFF_SECONDS = 0.1
# Client-side timeouts: a hung Redis (or Feast's Redis client) must raise, so the
# retry loop sees it, instead of blocking a thread forever.
REDIS_TIMEOUT_SECONDS = 10.0
REROUTED = "rerouted"
TIMER_TICK_SECONDS = 0.1  # how often due timers are looked up
LOUD_EVERY = 60  # with the backoff capped at 5 s: a warning about every 5 minutes


class FeatureEngine:
    """Holds the worker's clients, counters and metrics; handles one batch at a time.

    Args:
        settings: Batch limits, lateness, payload size limit.
        redis_url: The online store / state store.
        metrics: Where to record counters and freshness (a private one if omitted).
        layout: Where states live in Redis (read from the Feast repo config if
            omitted).
        redis_client: A state-store client (built from ``redis_url`` if omitted).
        clock: Wall clock (epoch seconds), for freshness and the future-ts rule.
        sleep: Awaitable sleep used between retries.
        events_topic: Where misrouted records are produced again (Faust-like
            ``send(key=, value=, partition=)``); without it, or until
            :attr:`partitions_for` is set (the consumer sets it), records are
            applied where they are found.
        live: Live segments (:mod:`streams.live_segments`); off without it or
            ``changes_topic``, where their changes go (Faust-like ``send``).
        triggers: Behavioural triggers (:mod:`streams.triggers`); off without it
            or ``triggers_topic``, where fired records go.

    Attributes:
        partitions_for: The consumer's ``partitions_for_topic``: the events
            topic's partitions as the consumer's metadata knows them.
    """

    def __init__(
        self,
        settings: Settings,
        redis_url: str,
        metrics: WorkerMetrics | None = None,
        *,
        layout: StateLayout | None = None,
        redis_client: redis.Redis | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        events_topic: Any = None,
        live: LiveSegments | None = None,
        changes_topic: Any = None,
        triggers: Triggers | None = None,
        triggers_topic: Any = None,
    ) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self.metrics = metrics or WorkerMetrics("engine")
        self.counts: Counter[str] = Counter()
        self.next_offsets: dict[tuple[str, int], int] = {}
        self._redis = redis_client
        self._layout = layout
        self.cache = StateCache(settings.state_cache_users)
        self._clock = clock
        self._sleep = sleep
        self.events_topic = events_topic
        # Live segments need both: the models and where their changes go.
        self.live = live if changes_topic is not None else None
        self.changes_topic = changes_topic
        self.triggers = triggers if triggers_topic is not None else None
        self.triggers_topic = triggers_topic
        self.clocks = StreamClocks(settings.timer_idle_seconds)
        self._next_tick = 0.0
        self.partitions_for: Callable[[str], Collection[int] | None] | None = None
        self.router = Router()
        self._store_identity = StoreIdentity()
        self.fencing = Fencing(settings.consumer_group)  # see streams.fencing
        self.deliveries = Deliveries(
            lambda: (self.changes_topic, self.triggers_topic),
            self._retry,
            self.counts,
            self.metrics,
        )
        self.outbox = self.deliveries.outbox

    @property
    def redis(self) -> redis.Redis:
        """The state-store client (created on first use, not at import)."""
        if self._redis is None:
            self._redis = redis.Redis.from_url(
                self.redis_url,
                socket_timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=2.0,
            )
        return self._redis

    @property
    def layout(self) -> StateLayout:
        """Feast's Redis layout for the stream view (read from the repo config)."""
        if self._layout is None:
            # Imported here: the worker passes its layout, and ``import feast``
            # took over a second of a starting worker's path to its first write.
            from core.store.feast_config import feature_store

            store = feature_store(self.settings, self.redis_url)
            self._layout = StateLayout.of(store)
        return self._layout

    # --- one batch -------------------------------------------------------------

    def parse(self, batch: Sequence[Any]) -> Parsed:
        """The events of ``batch``'s records, and the rejected ones' reasons.

        Pure (no state, no I/O): the consumer parses a batch while the one
        before it is being written.
        """
        return parse_isolating(
            [r.value for r in batch],
            now=self._clock(),
            max_future_seconds=self.settings.max_future_seconds,
            max_bytes=self.settings.max_event_bytes,
            min_ts=self.settings.min_event_time.timestamp(),
        )

    async def handle(
        self, batch: Sequence[Any], dlq_topic: Any, parsed: Parsed | None = None
    ) -> None:
        """Process one batch of Kafka records; returns only once all of it is written.

        ``batch`` holds records as aiokafka returns them (``topic``, ``partition``,
        ``offset``, ``timestamp`` in ms, ``key``, ``value``), in partition order;
        ``dlq_topic`` has Faust's ``send(key=..., value=...)`` returning an
        awaitable delivery future; ``parsed`` is :meth:`parse` of ``batch``, if
        already done. The caller commits after this returns, never before.
        """
        started = time.monotonic()
        if self.live is not None and self.live.due():
            await asyncio.to_thread(self.live.refresh)
        if parsed is None:
            parsed = self.parse(batch)
        rejected = {index for index, _ in parsed.rejections}
        valid_sources = [batch[i] for i in range(len(batch)) if i not in rejected]
        pairs = zip(parsed.events, valid_sources, strict=True)
        origin = {id(event): source for event, source in pairs}
        events, moves = self._route(parsed.events, origin)

        letters = [
            dead_letter(batch[index], rejection)
            for index, rejection in parsed.rejections
        ]
        outcomes: Counter[str] = Counter()
        if moves:
            outcomes[REROUTED] = len(moves)
        written: list[Event] = []
        outbox: dict[str, UserState] = {}
        rows = 0
        for chunk, result, error in await self._write_isolating(events, origin):
            if result is None:
                assert error is not None
                (event,) = chunk
                log.error(
                    "event %s of user %s breaks the feature step; sent to the DLQ",
                    event.event_id,
                    event.user_id,
                    exc_info=error,
                )
                rejection = poison_rejection(event, error)
                letters.append(dead_letter(origin.get(id(event)), rejection, event))
                continue
            late = {id(e) for e in result.late}
            written.extend(e for e in chunk if id(e) not in late)
            outbox.update(result.outbox)
            outcomes.update(result.counts)
            rows += len(result.touched)
            for event in result.late:
                rejection = late_rejection(
                    event, self.settings.allowed_lateness_seconds
                )
                letters.append(dead_letter(origin.get(id(event)), rejection, event))
        written_at = self._clock()

        if moves:
            await self._retry("reroute", lambda: send_moves(self.events_topic, moves))
            log.info("re-routed %d record(s) to their users' partitions", len(moves))
        if letters:
            await self._retry("dlq", lambda: send_letters(dlq_topic, letters))
        if outbox:
            await self.deliveries.start(outbox)
        self.clocks.batch(batch, ((origin[id(e)], e.ts) for e in written))

        # Everything is durable: record what happened.
        self.metrics.record_outcomes(outcomes)
        self.metrics.record_rejections(letter.reason for letter in letters)
        if written:
            self.metrics.record_write(
                written_at,
                (e.ts for e in written),
                (_timestamp(origin.get(id(e))) for e in written),
                rows,
            )
        self.metrics.batches.inc()
        self.metrics.batch_seconds.observe(time.monotonic() - started)
        self.counts.update(outcomes)
        self.counts.update(f"dlq:{letter.reason}" for letter in letters)
        self.counts["batches"] += 1

    def acknowledged(self, batch: Sequence[Any]) -> None:
        """Note a batch whose offsets are committed (message count, next offsets)."""
        self.metrics.messages.inc(len(batch))
        self.counts["messages"] += len(batch)
        next_offsets = self.next_offsets
        for record in batch:
            tp = (record.topic, record.partition)
            if record.offset + 1 > next_offsets.get(tp, 0):
                next_offsets[tp] = record.offset + 1

    def partitions_revoked(self, partitions: Iterable[Partition]) -> None:
        """Another worker may own these now: forget their users' cached states."""
        gone = list(partitions)
        self.clocks.revoked(gone)
        dropped = self.cache.drop_partitions(gone)
        for tp in gone:
            self.next_offsets.pop(tp, None)
        log.info("revoked %s: dropped %d cached states", gone, dropped)

    # --- steps -----------------------------------------------------------------

    def _partition_count(self) -> int:
        """Partitions of the events topic; 0 when re-routing is off or unknown."""
        if self.events_topic is None or self.partitions_for is None:
            return 0
        found = self.partitions_for(self.settings.events_topic)
        return len(found) if found else 0

    def _route(
        self, events: list[Event], origin: dict[int, Any]
    ) -> tuple[list[Event], list[Move]]:
        """Split off the events whose record must move to their user's partition."""
        partitions = self._partition_count()
        if not partitions:
            return events, []
        router = self.router
        misrouted = router.misrouted
        keep: list[Event] = []
        moves: list[Move] = []
        for event in events:
            record = origin[id(event)]
            if misrouted(event.user_id, record.key, record.partition, partitions):
                key, partition = router.owner(event.user_id, partitions)
                moves.append(Move(key, record.value, partition))
            else:
                keep.append(event)
        return keep, moves

    async def _write_isolating(
        self, events: list[Event], origin: dict[int, Any]
    ) -> list[tuple[list[Event], BatchResult | None, BaseException | None]]:
        """Write ``events``; isolate poison events by splitting, in order.

        Returns ``(chunk, result, None)`` for written chunks and
        ``([event], None, error)`` for each event the feature step cannot process.
        Halves are written one after the other, so each user's events keep their
        order.
        """
        done: list[tuple[list[Event], BatchResult | None, BaseException | None]] = []
        pending = [events] if events else []
        while pending:
            chunk = pending.pop(0)
            try:
                result = await self._retry(
                    "write", lambda c=chunk: asyncio.to_thread(self._write, c, origin)
                )
            except PoisonBatch as poison:
                if len(chunk) == 1:
                    done.append((chunk, None, poison.__cause__ or poison))
                else:
                    middle = len(chunk) // 2
                    pending[0:0] = [chunk[:middle], chunk[middle:]]
                continue
            done.append((chunk, result, None))
        return done

    def _write(self, events: list[Event], origin: dict[int, Any]) -> BatchResult:
        """Fold ``events`` (their records keyed by ``id(event)``) into saved states.

        Raises:
            PoisonBatch: Loading, folding or saving failed for a reason no retry
                can fix (not :func:`is_transient`); the caller splits the batch.
        """
        partitions: dict[str, Partition] = {}
        positions: list[Position | None] = []
        sources: dict[Partition, str] = {}
        for event in events:
            record = origin.get(id(event))
            if record is None:
                positions.append(None)
                continue
            tp = (record.topic, record.partition)
            source = sources.get(tp)
            if source is None:
                source = sources[tp] = source_key(*tp)
            positions.append((source, record.offset))
            partitions[event.user_id] = tp
        # Outside the classification below: a client or config problem here is
        # no event's fault, and is retried.
        client, layout = self.redis, self.layout
        users = dict.fromkeys(e.user_id for e in events)
        states, keys, missing = self.cache.take(users)
        if missing:
            # States are about to be read from the store: it must still hold every
            # write this worker made (see StoreReset). One round trip, only for
            # batches that read.
            self.check_store()
        acked = self.outbox.take_acked()
        try:
            if missing:
                states.update(load_states(client, layout, missing, keys))
            cleared = self._drain(acked, states, keys)
            result = apply_batch(
                events, states, self.settings.allowed_lateness_seconds, positions
            )
            live = self.live
            if live and result.touched and not live.place_batch(events, states, result):
                self.counts["segment_errors"] += 1
            first: list[tuple[Any, ...]] = cleared
            last: list[tuple[Any, ...]] = []
            if self.triggers is not None:
                models = live.models if live is not None else None
                placed = live.last if live is not None else None
                writes, fired = self.triggers.on_batch(
                    result.applied, states, partitions, models, placed
                )
                first, last = [*cleared, *writes.first], writes.last
                self._suppressed(fired.suppressed)
            keep = self.settings.profile_recent_events
            stage_recent(
                lambda *a: last.append(a),
                result.applied,
                keep,
                layout.key_ttl_seconds,
                states,
            )
            touched = {u: states[u] for u in result.touched}
            save_states(
                client,
                layout,
                touched,
                keys,
                first=first,
                last=last,
                guard=self.fencing.guard(),
            )
            if self.live is not None or self.triggers is not None:
                # Records written with the state but not yet produced: this
                # batch's, or (after a crash) an earlier attempt's in a loaded state.
                result.outbox = pending(states)
        except BaseException as exc:
            # The attempt may have changed cached states that Redis never got.
            self.cache.evict(users)
            self.outbox.restore(acked)
            if isinstance(exc, Exception) and not (
                is_transient(exc) or isinstance(exc, WriteFenced)  # neither poison
            ):
                raise PoisonBatch(f"{type(exc).__name__}: {exc}") from exc
            raise
        self.cache.put(states, keys, partitions)
        return result

    async def fire_timers(self) -> None:
        """Fire the timers due on this worker's partitions, then produce them.

        Called by the consume loop between batches (at most every
        ``TIMER_TICK_SECONDS``). Raises :class:`StoreReset` like :meth:`handle`.
        """
        if time.monotonic() < self._next_tick:
            return
        if self.triggers is None and not self.outbox.has_acked():
            return
        if self.triggers is not None and self.triggers.due():
            # A quiet stream still takes up a new rules file.
            await asyncio.to_thread(self.triggers.reload)
        self._next_tick = time.monotonic() + TIMER_TICK_SECONDS
        clocks = self.clocks.now(self._clock())
        outbox = await self._retry(
            "timers", lambda: asyncio.to_thread(self._fire_timers, clocks)
        )
        if outbox:
            await self.deliveries.start(outbox)

    def _fire_timers(self, clocks: dict[Partition, float]) -> dict[str, UserState]:
        """Fire, write and return the states to deliver (blocking); also empty
        the outboxes the broker has acknowledged since the last write."""
        if self.triggers is None:
            self._write_drained()
            return {}
        acked = self.outbox.take_acked()
        try:
            outbox, suppressed = fire_timers(
                self.triggers,
                self.redis,
                self.layout,
                self.cache,
                self.check_store,
                clocks,
                self.fencing.guard(),
                lambda states, keys: self._drain(acked, states, keys),
                self.live,
            )
        except BaseException:
            self.outbox.restore(acked)
            raise
        self._suppressed(suppressed)
        return outbox

    def _drain(
        self,
        acked: dict[str, set[str]],
        states: dict[str, UserState],
        keys: dict[str, bytes],
    ) -> list[tuple[Any, ...]]:
        """Commands emptying acknowledged records (see :func:`streams.outbox.drain`)."""
        if not acked:
            return []
        layout = self.layout
        return drain(
            acked, states, self.cache.peek, lambda u: keys.get(u) or layout.key(u)
        )

    def _suppressed(self, n: int) -> None:
        self.counts["triggers_suppressed"] += n
        self.metrics.activations.inc(n, kind="trigger_suppressed")

    async def flush_outbox(self) -> None:
        """Settle the deliveries and store that their outboxes are empty, before
        partitions go to another worker (which would send them again). Best
        effort: a record sent twice keeps its id."""
        await self.settle()
        if not self.outbox.has_acked():
            return
        try:
            await asyncio.to_thread(self._write_drained)
        except WriteFenced as fenced:  # dropped without a revoke: say so
            self.fencing.refused(self, fenced)
        except Exception as exc:
            log.info("emptying produced outboxes failed (%s); they may go again", exc)

    def _write_drained(self) -> None:
        """Store the acknowledged records' removal, with no state to write."""
        acked = self.outbox.take_acked()
        try:
            cleared = self._drain(acked, {}, {})
            guard = self.fencing.guard()
            save_states(self.redis, self.layout, {}, first=cleared, guard=guard)
        except BaseException:
            self.outbox.restore(acked)
            raise

    async def settle(self) -> None:
        """Wait until every record handed to the broker so far is acknowledged.

        The consumer calls it before committing offsets: a committed batch's
        records are then on the broker, not only in the stored outboxes.
        """
        await self.deliveries.settle()

    def check_store(self) -> None:
        """Raise :class:`StoreReset` if the store restarted or failed over since the
        last check (its ``run_id`` changed). Blocking; transient errors propagate.
        """
        self._store_identity.check(self.redis)

    def store_reset(self) -> None:
        """Forget every cached state: the store is the truth again after a reset."""
        dropped = len(self.cache)
        self.cache.clear()
        self.outbox.forget()
        self.counts["store_resets"] += 1
        log.warning(
            "the online store restarted or failed over; dropped %d cached states "
            "and replaying from the committed offsets",
            dropped,
        )

    async def _retry(self, stage: str, call: Callable[[], Awaitable[T]]) -> T:
        """Await ``call()`` until it succeeds; PoisonBatch and StoreReset pass up."""
        delay = FIRST_BACKOFF_SECONDS
        failures = 0
        while True:
            try:
                return await call()
            except (PoisonBatch, StoreReset, WriteFenced):
                raise  # a fenced write is refused for good: the consumer rejoins
            except Exception as exc:
                failures += 1
                self.metrics.record_retry(stage, exc)
                self.counts[f"retry:{stage}"] += 1
                pause = delay * random.uniform(0.5, 1.0)
                expected = isinstance(exc, redis.RedisError | OSError)
                if failures % LOUD_EVERY == 1:
                    # The first failure (with a traceback unless it is an
                    # ordinary connection problem), then a reminder now and then.
                    log.warning(
                        "%s failed %d time(s) (%s: %s); retrying in %.2fs",
                        stage,
                        failures,
                        type(exc).__name__,
                        exc,
                        pause,
                        exc_info=not expected and failures == 1,
                    )
                else:
                    log.info("%s failed again (%s: %s)", stage, type(exc).__name__, exc)
                await self._sleep(pause)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)


def _timestamp(source: Any) -> float | None:
    """A record's broker timestamp in epoch seconds (aiokafka gives milliseconds)."""
    stamp = getattr(source, "timestamp", None)
    return None if stamp is None else stamp / 1000.0
