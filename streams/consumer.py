"""The worker's consume loop: whole fetches in, one write and one commit per batch.

Runs inside the Faust worker (:mod:`streams.app`) as its long-running task, on an
aiokafka consumer in the configured consumer group. Why not a Faust agent: Faust
hands every message through its conductor, a queue and a stream, and awaits two
tasks per message (``Consumer._drain_messages`` -> ``wait_first``). Measured here,
a Faust agent that does nothing but ack tops out near 10,700 messages/s, half the
20,000 events/s one worker must sustain, before any feature work. Taking whole
fetches with ``getmany`` costs a few microseconds per message instead, and gives
the engine the batch it wants anyway. Faust still runs the process: its worker
command, signal handling, logging, timers (metrics) and the DLQ producer.

Delivery: a batch's offsets become committable only after
:meth:`streams.worker_engine.FeatureEngine.handle` returned, i.e. after every
message of it is in the online store or the DLQ, and once its writes are
``commit_durability_lag_seconds`` old, so a store that restarts without its last
second of writes still holds everything up to the committed offsets. Before each
commit, and before any batch reads states, the engine checks that the store is the
same server process (:class:`streams.worker_engine.StoreReset`); if not, cached
states are dropped and the assigned partitions rewound to their committed offsets,
and the replay re-applies what the store lost. Offsets are committed at most every
``commit_interval_seconds`` (a commit is a broker round trip; per batch it would
cost throughput and freshness), and always on a revoke and on shutdown. On a
rebalance the revoke callback waits for the batch in flight, commits, then drops
the revoked partitions' cached states, so a partition's next owner starts from
committed offsets and the states in Redis. A commit refused because the group has
moved on is logged and dropped: the new owner replays those messages and the
state's dedupe data makes the replay a no-op. A worker dropped from the group
without a revoke (frozen past its session timeout) cannot write over the new
owner's states: its writes are fenced by its group generation
(:mod:`streams.fencing`); a refused batch is not committed, the cached states are
dropped, the partitions rewound, and the worker rejoins.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from infra.settings import Settings
from streams.fencing import WriteFenced, assign_fences, request_rejoin
from streams.store_reset import StoreReset

if TYPE_CHECKING:  # imported by whoever builds the engine (it loads Feast)
    from streams.processor import Parsed
    from streams.worker_engine import FeatureEngine

log = logging.getLogger("segscore.worker")

FINAL_COMMIT_SECONDS = 5.0
# Measured: the bundled tansu answers a JoinGroup only after half the member's
# session timeout (1 s at 2 s, 3 s at 6 s, 5 s at 10 s), and a started or restarted
# worker writes nothing until it has joined. Apache Kafka rejects session timeouts
# under its group.min.session.timeout.ms (6 s by default), so this shorter one is
# used only against the bundled broker, and only when none is configured.
BUNDLED_BROKER_SESSION_TIMEOUT_MS = 2000


@dataclass(frozen=True)
class GroupTimeouts:
    """The consumer-group timeouts of the events consumer, in milliseconds."""

    session_ms: int
    heartbeat_ms: int
    rebalance_ms: int


def group_timeouts(settings: Settings, bundled_broker: bool) -> GroupTimeouts:
    """The settings' group timeouts; shorter defaults against the bundled tansu."""
    session = settings.consumer_session_timeout_ms
    heartbeat = settings.consumer_heartbeat_interval_ms
    if (
        bundled_broker
        and "consumer_session_timeout_ms" not in settings.model_fields_set
    ):
        session = BUNDLED_BROKER_SESSION_TIMEOUT_MS
        heartbeat = min(heartbeat, session // 3)  # Kafka's advice: at most a third
    return GroupTimeouts(session, heartbeat, settings.consumer_rebalance_timeout_ms)


class EventConsumer:
    """Consumes the events topic in batches and hands them to the engine.

    Args:
        settings: Topic, group, batch size, fetch and group timeouts.
        broker: ``host:port`` of the Kafka broker.
        engine: Processes and writes each batch; ``None`` with ``build_engine``.
        dlq_topic: Where the engine sends rejected events.
        client_id: Names this member in the group (the worker id).
        timeouts: Group timeouts (the settings' when omitted).
        build_engine: Makes the engine, in a thread, while the consumer joins its
            group: the engine's imports (Feast) and the join (a broker-side wait)
            take about a second each, and a starting worker writes nothing before
            both are done.
    """

    def __init__(
        self,
        settings: Settings,
        broker: str,
        engine: FeatureEngine | None,
        dlq_topic: Any,
        client_id: str = "segscore-worker",
        timeouts: GroupTimeouts | None = None,
        build_engine: Callable[[], FeatureEngine] | None = None,
    ) -> None:
        if engine is None and build_engine is None:
            raise ValueError("an engine or a way to build one is needed")
        self.settings = settings
        self.timeouts = timeouts or group_timeouts(settings, bundled_broker=False)
        self.broker = broker
        self.engine = engine
        self._build_engine = build_engine
        self._building: asyncio.Future[FeatureEngine] | None = None
        self.dlq_topic = dlq_topic
        self.client_id = client_id
        self.consumer: AIOKafkaConsumer | None = None
        # Held while a batch is handled and committed; the revoke callback waits
        # for it, so no batch straddles a change of ownership.
        self._in_flight = asyncio.Lock()
        # Written batches not committed yet: (monotonic write time, next offsets).
        self._uncommitted: deque[tuple[float, dict[TopicPartition, int]]] = deque()
        self._last_commit = time.monotonic()
        # Bumped by every rewind and revoke: fetched records older than the
        # change are not written (see run).
        self._epoch = 0

    def _create(self) -> AIOKafkaConsumer:
        s = self.settings
        return AIOKafkaConsumer(
            bootstrap_servers=self.broker,
            group_id=s.consumer_group,
            client_id=self.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=s.consumer_fetch_max_wait_ms,
            session_timeout_ms=self.timeouts.session_ms,
            heartbeat_interval_ms=self.timeouts.heartbeat_ms,
            rebalance_timeout_ms=self.timeouts.rebalance_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )

    async def ready_engine(self) -> FeatureEngine:
        """The engine, once built (the rebalance callbacks may come first)."""
        if self.engine is None:
            if self._building is None:
                assert self._build_engine is not None
                self._building = asyncio.ensure_future(
                    asyncio.to_thread(self._build_engine)
                )
            self.engine = await self._building
        return self.engine

    async def run(self, started: Callable[[], None] | None = None) -> None:
        """Consume until cancelled; leaves the group cleanly on the way out."""
        consumer = self.consumer = self._create()
        consumer.subscribe([self.settings.events_topic], listener=_Rebalance(self))
        building = asyncio.ensure_future(self.ready_engine())
        try:
            await consumer.start()  # returns once the group is joined
            engine = await building
        except BaseException:
            building.cancel()
            await consumer.stop()
            raise
        # The engine re-routes by the events topic's partition count (metadata).
        engine.partitions_for = consumer.partitions_for_topic
        if started is not None:
            started()
        poll_ms = max(int(self.settings.batch_max_seconds * 1000), 1)
        # The batch being written: the next one is fetched and parsed meanwhile
        # (the loop thread is otherwise idle while the write thread computes and
        # waits on Redis), but written, like timers, only once it is done.
        writing: asyncio.Future[None] | None = None
        try:
            while True:
                epoch = self._epoch
                records = await consumer.getmany(
                    timeout_ms=poll_ms, max_records=self.settings.batch_max_events
                )
                batch = [record for part in records.values() for record in part]
                parsed = engine.parse(batch) if batch else None
                if writing is not None:
                    await writing
                    writing = None
                    if batch:
                        # What came in during the write joins this batch, as it
                        # would have without the early fetch.
                        await self._top_up(consumer, engine, records, batch, parsed)
                await self._timers(consumer)
                if self._epoch != epoch:
                    # Rewound or rebalanced since the fetch: the partitions read
                    # again from their committed offsets, and these records come
                    # again in order. Written now, they would be written first.
                    records, batch = {}, []
                if batch:
                    writing = asyncio.ensure_future(
                        self._process(consumer, records, batch, parsed)
                    )
                    # Let it reach its write thread before this loop goes on
                    # to fetch and parse the next batch.
                    await asyncio.sleep(0)
                elif self._uncommitted:
                    await self._commit(consumer)
        finally:
            if writing is not None:
                writing.cancel()
                await asyncio.gather(writing, return_exceptions=True)
            await self._final_commit(consumer)
            await consumer.stop()

    async def _top_up(
        self,
        consumer: AIOKafkaConsumer,
        engine: FeatureEngine,
        records: dict[TopicPartition, list[Any]],
        batch: list[Any],
        parsed: Parsed | None,
    ) -> None:
        """Add the records already fetched to ``batch`` (in place), up to its limit."""
        room = self.settings.batch_max_events - len(batch)
        if room <= 0 or parsed is None:
            return
        more = await consumer.getmany(timeout_ms=0, max_records=room)
        extra = [record for part in more.values() for record in part]
        if not extra:
            return
        parsed.extend(engine.parse(extra), len(batch))
        batch += extra
        for tp, part in more.items():
            records.setdefault(tp, []).extend(part)

    async def _process(
        self,
        consumer: AIOKafkaConsumer,
        records: dict[TopicPartition, list[Any]],
        batch: list[Any] | None = None,
        parsed: Parsed | None = None,
    ) -> None:
        engine = await self.ready_engine()
        async with self._in_flight:
            if batch is None:
                batch = [record for part in records.values() for record in part]
            try:
                await engine.handle(batch, self.dlq_topic, parsed)
            except StoreReset:
                await self._rewind(consumer, engine)
                return
            except WriteFenced as fenced:
                await self._rewind(consumer, engine, fenced)
                return
            written = {tp: part[-1].offset + 1 for tp, part in records.items() if part}
            self._uncommitted.append((time.monotonic(), written))
            engine.acknowledged(batch)
            interval = self.settings.commit_interval_seconds
            if time.monotonic() - self._last_commit >= interval:
                await self._commit(consumer)

    async def _timers(self, consumer: AIOKafkaConsumer) -> None:
        """Fire due timers between batches (never during one, nor a rebalance)."""
        engine = await self.ready_engine()
        async with self._in_flight:
            try:
                await engine.fire_timers()
            except StoreReset:
                await self._rewind(consumer, engine)
            except WriteFenced as fenced:
                await self._rewind(consumer, engine, fenced)

    async def _commit(
        self, consumer: AIOKafkaConsumer, everything: bool = False
    ) -> None:
        """Commit the offsets of the written batches old enough to be durable.

        ``everything`` (revoke, shutdown) commits all written batches. Either way the
        store is checked first: after a reset nothing is committed and the
        partitions are rewound instead.
        """
        self._last_commit = time.monotonic()
        if not self._uncommitted:
            return
        horizon = time.monotonic() - self.settings.commit_durability_lag_seconds
        offsets: dict[TopicPartition, int] = {}
        pending = self._uncommitted
        while pending and (everything or pending[0][0] <= horizon):
            offsets.update(pending.popleft()[1])
        if not offsets:
            return
        engine = self.engine
        if engine is not None:
            # The batches' records must be on the broker, not only in outboxes
            # that nothing would load again once their offsets are committed.
            await engine.settle()
            try:
                await asyncio.to_thread(engine.check_store)
            except StoreReset:
                await self._rewind(consumer, engine)
                return
            except Exception as exc:  # the store is away: commit later
                log.info("store check failed (%s); not committing yet", exc)
                pending.extendleft([(0.0, offsets)])
                return
        try:
            await consumer.commit(offsets)
        except CommitFailedError as exc:
            log.warning("commit refused after a rebalance (replay is a no-op): %s", exc)

    async def _rewind(
        self,
        consumer: AIOKafkaConsumer,
        engine: FeatureEngine,
        fenced: WriteFenced | None = None,
    ) -> None:
        """After a store reset or a fenced write: drop cached states, replay from
        committed offsets; when fenced, also rejoin the group.

        A fenced worker's uncommitted offsets belong to the new owner now, and its
        position is past the refused batch: left there, a later commit could skip
        records it never wrote.
        """
        self._uncommitted.clear()
        self._epoch += 1
        if fenced is None:
            engine.store_reset()
        else:
            engine.fencing.refused(engine, fenced)
        for tp in consumer.assignment():
            committed = await consumer.committed(tp)
            if committed is None:
                await consumer.seek_to_beginning(tp)
                committed = 0
            else:
                consumer.seek(tp, committed)
            engine.next_offsets[(tp.topic, tp.partition)] = committed
        if fenced is not None:
            request_rejoin(consumer)

    async def _final_commit(self, consumer: AIOKafkaConsumer) -> None:
        """On the way out: commit what is written, if the broker answers in time."""
        if not self._uncommitted:
            return
        try:
            await asyncio.wait_for(
                self._commit(consumer, everything=True), FINAL_COMMIT_SECONDS
            )
        except (TimeoutError, KafkaError) as exc:
            log.warning("final commit failed (a restart replays; no-op): %s", exc)

    async def partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Finish the batch in flight, commit, drop the revoked partitions' users."""
        self._epoch += 1
        async with self._in_flight:
            if self.consumer is not None:
                await self._commit(self.consumer, everything=True)
            # Not built yet (the first join): no batch was handled, nothing cached;
            # waiting for it here would hold up the join it overlaps with.
            if (engine := self.engine) is not None:
                await engine.flush_outbox()
                engine.partitions_revoked((tp.topic, tp.partition) for tp in revoked)

    def positions(self) -> dict[tuple[str, int], int]:
        """Per assigned partition: the next offset to process (all before it done)."""
        consumer, engine = self.consumer, self.engine
        if consumer is None or engine is None:
            return {}
        assigned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        return {k: n for k, n in engine.next_offsets.items() if k in assigned}

    def lag(self) -> dict[tuple[str, int], int]:
        """Per assigned partition: high watermark minus the next offset to process.

        For the lag gauge only. The bundled tansu reports high watermarks behind
        records it has acknowledged (see :mod:`streams.metrics`), so this reads
        low against it; nothing may decide "caught up" from it.
        """
        consumer, engine = self.consumer, self.engine
        if consumer is None or engine is None:
            return {}
        lags: dict[tuple[str, int], int] = {}
        for tp in consumer.assignment():
            key = (tp.topic, tp.partition)
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            lags[key] = max(highwater - engine.next_offsets.get(key, 0), 0)
        return lags


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, owner: EventConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.owner.partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("assigned %s", sorted((tp.topic, tp.partition) for tp in assigned))
        consumer = self.owner.consumer
        if consumer is None:
            return
        engine = await self.owner.ready_engine()
        engine.clocks.assigned((tp.topic, tp.partition) for tp in assigned)
        # Before any batch of this generation (aiokafka may hand the loop records
        # while this callback runs): a worker that held these partitions before
        # it froze cannot write them any more, and a fence left too high by a
        # broker that forgot the group is lowered before it refuses a batch.
        async with self.owner._in_flight:
            await assign_fences(consumer, engine, assigned)
        for tp in assigned:
            # Where this worker starts, for the lag gauge until its first commit.
            try:
                committed = await consumer.committed(tp)
            except KafkaError as exc:
                log.info("committed offset of %s unknown: %s", tp, exc)
                continue
            engine.next_offsets[(tp.topic, tp.partition)] = committed or 0
