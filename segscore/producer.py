"""Producing events to and reading records from Kafka (simulator, demo, tests)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from core.events import Event


async def produce_raw_async(
    broker: str, topic: str, records: Iterable[tuple[bytes | None, bytes]]
) -> int:
    """Send ``(key, value)`` records and wait until the broker has them all."""
    producer = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=5, acks="all")
    await producer.start()
    sent = 0
    try:
        batch = []
        for key, value in records:
            batch.append(await producer.send(topic, value=value, key=key))
            sent += 1
            if len(batch) >= 5000:
                await asyncio.gather(*batch)
                batch.clear()
        await asyncio.gather(*batch)
    finally:
        await producer.stop()
    return sent


def produce_raw(
    broker: str, topic: str, records: Iterable[tuple[bytes | None, bytes]]
) -> int:
    """Blocking :func:`produce_raw_async`."""
    return asyncio.run(produce_raw_async(broker, topic, records))


def produce_events(broker: str, topic: str, events: Iterable[Event]) -> int:
    """Send events keyed by user_id, in the order given."""
    return produce_raw(
        broker, topic, ((e.user_id.encode(), e.to_json()) for e in events)
    )


async def read_topic_async(
    broker: str, topic: str, expect: int, timeout: float = 30.0
) -> list[tuple[bytes | None, bytes]]:
    """Read a topic from the beginning until ``expect`` records or ``timeout``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker, enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    records: list[tuple[bytes | None, bytes]] = []
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(records) < expect and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=250)
            for messages in batches.values():
                records.extend((m.key, m.value) for m in messages)
    finally:
        await consumer.stop()
    return records


def read_topic(
    broker: str, topic: str, expect: int, timeout: float = 30.0
) -> list[tuple[bytes | None, bytes]]:
    """Blocking :func:`read_topic_async`."""
    return asyncio.run(read_topic_async(broker, topic, expect, timeout))
