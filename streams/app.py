"""The Faust app: ``faust -A streams.app worker`` (or ``segscore worker``).

The agent consumes ``events`` in micro-batches (``take_events``). For each batch it
validates (bad events to ``events-dlq`` with their reason), folds the valid ones into
per-user state held in Redis, pushes the touched users' features to the Feast online
store, saves the states, and only then lets Faust acknowledge the batch's offsets.
Redis failures are retried with backoff forever: the batch is neither dropped nor
acknowledged until it is written.
"""

from __future__ import annotations

import asyncio
import logging

import faust

from infra.local_stack import current
from infra.settings import get_settings
from streams.worker_engine import FeatureEngine

log = logging.getLogger("segscore.worker")

settings = get_settings()
_stack = current(settings)

app = faust.App(
    settings.consumer_group,
    broker=f"kafka://{_stack.kafka_broker}",
    value_serializer="raw",
    key_serializer="raw",
    datadir=str(settings.home / "faust"),
    web_enabled=False,
    consumer_auto_offset_reset="earliest",
    # Faust's 60 s defaults made the first JoinGroup against tansu take ~30 s.
    broker_session_timeout=6,
    broker_heartbeat_interval=2,
    broker_rebalance_timeout=10,
    broker_commit_interval=1.0,
    topic_allow_declare=False,
)

events_topic = app.topic(settings.events_topic, value_type=bytes, key_type=bytes)
dlq_topic = app.topic(settings.dlq_topic, value_type=bytes, key_type=bytes)

engine = FeatureEngine(settings, _stack.redis_url)


@app.agent(events_topic)
async def build_features(stream: faust.Stream) -> None:
    """Turn micro-batches of raw events into online features."""
    async for batch in stream.take_events(
        settings.batch_max_events, within=settings.batch_max_seconds
    ):
        await engine.handle(batch, dlq_topic)


@app.timer(interval=30.0)
async def report_counts() -> None:
    """Log the running counters now and then (quiet at the default level)."""
    log.info("counters %s", dict(engine.counts))


def main() -> None:
    """Entry point used by ``segscore worker``."""
    asyncio.set_event_loop(asyncio.new_event_loop())
    app.main()
