"""Kafka topic management: make sure the worker's topics exist."""

from __future__ import annotations

import asyncio

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from infra.settings import Settings


async def ensure_topics_async(broker: str, settings: Settings) -> list[str]:
    """Create the events, DLQ, segment-change and trigger topics when missing.

    Returns:
        The topics created.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=broker, request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            settings.events_topic,
            settings.dlq_topic,
            settings.segment_changes_topic,
            settings.triggers_topic,
        ]
        missing = [t for t in wanted if t not in existing]
        if missing:
            topics = [
                NewTopic(
                    t, num_partitions=settings.topic_partitions, replication_factor=1
                )
                for t in missing
            ]
            try:
                await admin.create_topics(topics)
            except KafkaError:
                # Another process may have created them between list and create.
                still = set(await admin.list_topics())
                if any(t not in still for t in missing):
                    raise
        return missing
    finally:
        await admin.close()


def ensure_topics(broker: str, settings: Settings) -> list[str]:
    """Blocking wrapper of :func:`ensure_topics_async`."""
    return asyncio.run(ensure_topics_async(broker, settings))
