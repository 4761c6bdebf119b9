"""Consumer tuning Faust does not expose as settings.

Faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` hard-coded. A broker
that answers a waiting fetch as soon as data arrives (Apache Kafka) makes that
harmless, but one that waits out the full time (tansu does) adds up to 1.5 s to
every event's freshness. We lower it on the consumer Faust creates, before it starts.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

_ORIGINAL = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer
_fetch_max_wait_ms = 1500


def _create_worker_consumer(self: Any, transport: Any) -> Any:
    consumer = _ORIGINAL(self, transport)
    # aiokafka reads this when start() creates the fetcher.
    consumer._fetch_max_wait_ms = _fetch_max_wait_ms
    return consumer


def set_fetch_max_wait(milliseconds: int) -> None:
    """Make Faust's worker consumers wait at most this long for fetch data."""
    global _fetch_max_wait_ms
    _fetch_max_wait_ms = int(milliseconds)
    faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = (
        _create_worker_consumer
    )
