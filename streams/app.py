"""The Faust app: ``faust -A streams.app worker`` (or ``segscore worker``).

The worker's one long-running task consumes ``events`` in whole fetches
(:mod:`streams.consumer`, which says why it is not a per-message Faust agent). For
each batch the engine validates (bad events to ``events-dlq`` with their reason),
folds the valid ones into per-user state and writes the touched users' states to
the Feast online store, and waits for the DLQ records to be delivered; only then are
the batch's offsets committed. Redis and broker failures are retried inside the
engine forever with backoff; should anything else escape, the process exits at once
without committing, and the restarted worker replays from the last committed offset
(updates are idempotent).

Metrics (Prometheus text): ``$SEGSCORE_HOME/metrics/<worker-id>.prom``, rewritten
every ``worker_metrics_interval_seconds``, and ``/metrics`` on
``SEGSCORE_WORKER_METRICS_PORT`` when that is not 0. See :mod:`streams.metrics`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import warnings

import faust

from infra.local_stack import current
from infra.settings import get_settings
from streams.consumer import EventConsumer
from streams.metrics import WorkerMetrics, remove_textfile, textfile_path, worker_id
from streams.worker_engine import FeatureEngine

# Feast warns on every push whose timestamps carry sub-microsecond float noise.
warnings.filterwarnings("ignore", message="Discarding nonzero nanoseconds")

log = logging.getLogger("segscore.worker")

EXIT_UNEXPECTED = 70  # EX_SOFTWARE

settings = get_settings()
_stack = current(settings)
WORKER_ID = worker_id(settings)
METRICS_FILE = textfile_path(settings, WORKER_ID)

app = faust.App(
    # Not the events consumer group: Faust's own consumer subscribes to nothing.
    f"{settings.consumer_group}-app",
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

dlq_topic = app.topic(settings.dlq_topic, value_type=bytes, key_type=bytes)

metrics = WorkerMetrics(WORKER_ID)
engine = FeatureEngine(settings, _stack.redis_url, metrics)


consumer = EventConsumer(settings, _stack.kafka_broker, engine, dlq_topic, WORKER_ID)


def _ready() -> None:
    """Load what every batch needs, then take it out of the garbage collector's way.

    Freezing moves the ~100k objects that imports and setup created into the
    permanent generation; full collections then scan only live stream data, and
    a profile showed them shrinking from ~45 ms to a few (see streams.user_state).
    """
    _ = engine.layout
    gc.collect()
    gc.freeze()
    log.info("consuming %s", settings.events_topic)


@app.task
async def consume_events() -> None:
    """Consume, write and commit batch after batch; exit hard on the unexpected."""
    try:
        await consumer.run(started=_ready)
    except asyncio.CancelledError:
        raise  # shutting down: the batch in flight stays uncommitted
    except BaseException:
        log.critical(
            "unexpected failure handling a batch; exiting without committing it",
            exc_info=True,
        )
        logging.shutdown()
        os._exit(EXIT_UNEXPECTED)


def refresh_metrics() -> None:
    """Update the lag gauges and rewrite the textfile; never raises."""
    try:
        metrics.set_lag(consumer.lag())
    except Exception as exc:  # consumer not started yet, or rebalancing
        log.debug("lag unavailable: %s", exc)
    try:
        metrics.write_textfile(METRICS_FILE)
    except OSError as exc:
        log.warning("cannot write %s: %s", METRICS_FILE, exc)


@app.task
async def start_metrics() -> None:
    """Serve metrics over HTTP when a port is set; write the first textfile."""
    addr, port = settings.worker_metrics_addr, settings.worker_metrics_port
    if port:
        try:
            port = metrics.serve_http(port, addr)
        except OSError as exc:  # e.g. the port is taken: keep consuming regardless
            log.error("cannot serve metrics on %s:%d: %s", addr, port, exc)
        else:
            log.info("metrics on http://%s:%d/metrics", addr, port)
    refresh_metrics()


@app.timer(interval=settings.worker_metrics_interval_seconds)
async def write_metrics() -> None:
    """Refresh the exposition periodically (node-exporter textfile style)."""
    refresh_metrics()


@app.timer(interval=30.0)
async def report_counts() -> None:
    """Log the running counters now and then (quiet at the default level)."""
    log.info("counters %s", dict(engine.counts))


@app.on_before_shutdown.connect
async def drop_metrics_file(sender: faust.App, **kwargs: object) -> None:
    """A stopped worker leaves no stale series behind."""
    remove_textfile(METRICS_FILE)


def main() -> None:
    """Entry point used by ``segscore worker``."""
    asyncio.set_event_loop(asyncio.new_event_loop())
    app.main()
