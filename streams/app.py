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

Start-up is the freshness gap of every deploy, crash and restart, so it is kept to
about 2 s before the first write (``segscore bench stream`` reports it as
``worker_start_to_first_write_s``; Faust's defaults took 12 s): Faust's own
consumer and its group join are left out (:class:`WorkerApp`), the engine's
imports run in a thread while the events consumer joins its group
(:func:`_build_engine`), typeguard does not recompile
Feast at import, and against the bundled broker the group session is shorter
(:func:`streams.consumer.group_timeouts`).

Metrics (Prometheus text): ``$SEGSCORE_HOME/metrics/<worker-id>.prom``, rewritten
every ``worker_metrics_interval_seconds``, and ``/metrics`` on
``SEGSCORE_WORKER_METRICS_PORT`` when that is not 0. See :mod:`streams.metrics`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import warnings
from typing import TYPE_CHECKING, Any

import faust
import typeguard
from aiokafka.errors import KafkaError
from faust.app.base import BootStrategy

from infra.heap import settle_after_setup
from infra.local_stack import bundled_broker, current
from infra.settings import Settings, get_settings
from infra.topics import ensure_topics
from streams.consumer import EventConsumer, group_timeouts
from streams.metrics import WorkerMetrics, remove_textfile, textfile_path, worker_id

if TYPE_CHECKING:  # built in a thread by _build_engine (they load Feast)
    from core.store.state_store import StateLayout
    from streams.worker_engine import FeatureEngine


def _skip_feast_typechecks() -> None:
    """Make typeguard's ``@typechecked`` a no-op in this process, before Feast loads.

    Feast decorates its classes with it, and typeguard re-parses and recompiles
    every decorated method from source at import: measured, ~3 of the ~4 s that
    ``import feast`` took, which a restarted worker spent before its first write.
    The worker builds no Feast objects from user input, so those argument checks
    guard nothing here (``python -O`` would drop them too, with our asserts).
    """

    def typechecked(target: Any = None, **_options: Any) -> Any:
        return target if target is not None else (lambda decorated: decorated)

    typeguard.typechecked = typechecked


# Feast warns on every push whose timestamps carry sub-microsecond float noise.
warnings.filterwarnings("ignore", message="Discarding nonzero nanoseconds")

log = logging.getLogger("segscore.worker")

EXIT_UNEXPECTED = 70  # EX_SOFTWARE

settings = get_settings()
_stack = current(settings)
WORKER_ID = worker_id(settings)
METRICS_FILE = textfile_path(settings, WORKER_ID)


class _ProducerOnlyBoot(BootStrategy):
    """Faust's services minus its consumer, conductor and tables.

    The events are consumed by :class:`streams.consumer.EventConsumer`; Faust's own
    consumer would subscribe to nothing yet still join a consumer group (a second
    join: 3 s against the bundled broker at Faust's settings) and wait a second for
    tables that do not exist, all before the app's tasks start.
    """

    enable_kafka_consumer = False


class WorkerApp(faust.App):
    """The Faust app of the worker: process, producer, timers; no Faust consumer."""

    BootStrategy = _ProducerOnlyBoot


def state_layout(settings: Settings, redis_url: str) -> StateLayout:
    """Where states live in Redis, from the repo config alone.

    Building a ``FeatureStore`` for this (what the engine does by default) loads
    the registry too; the layout needs only the project and serialization version.
    Its key build is checked against Feast's once per Feast release (see
    :mod:`core.store.key_check`): otherwise the first batch imported Feast.
    """
    from core.store.feast_config import repo_config_dict
    from core.store.key_check import VERDICTS, checked_layout
    from core.store.state_store import StateLayout

    config = repo_config_dict(settings, redis_url)
    layout = StateLayout(
        project=config["project"],
        serialization_version=config["entity_key_serialization_version"],
        key_ttl_seconds=config["online_store"].get("key_ttl_seconds"),
    )
    return checked_layout(layout, settings.data_dir / VERDICTS)


PRODUCER_LINGER_SECONDS = 0.005
PRODUCER_BATCH_BYTES = 256 * 1024

app = WorkerApp(
    f"{settings.consumer_group}-app",
    broker=f"kafka://{_stack.kafka_broker}",
    value_serializer="raw",
    key_serializer="raw",
    datadir=str(settings.home / "faust"),
    web_enabled=False,
    topic_allow_declare=False,
    # Records (segment changes, triggers) go out in bursts of hundreds per batch:
    # without a linger each went in a produce request of its own, and writing
    # them to the socket took a tenth of the worker's time. 5 ms is nothing
    # against the quarter second an activation may take.
    producer_linger=PRODUCER_LINGER_SECONDS,
    producer_max_batch_size=PRODUCER_BATCH_BYTES,
)

dlq_topic = app.topic(settings.dlq_topic, value_type=bytes, key_type=bytes)

metrics = WorkerMetrics(WORKER_ID)
# Misrouted records are produced again here, to their user's partition.
events_topic = app.topic(settings.events_topic, value_type=bytes, key_type=bytes)
changes_topic = app.topic(
    settings.segment_changes_topic, value_type=bytes, key_type=bytes
)
triggers_topic = app.topic(settings.triggers_topic, value_type=bytes, key_type=bytes)


def _build_engine() -> FeatureEngine:
    """The feature engine; runs in a thread while the consumer joins its group.

    Its imports (Feast, the feature code) are most of a worker's start-up, so they
    happen here rather than at module import: the group join is a wait on the
    broker, and the two overlap.
    """
    _skip_feast_typechecks()
    from streams.live_segments import LiveSegments
    from streams.triggers import Triggers
    from streams.worker_engine import FeatureEngine

    if settings.live_segments or settings.triggers:
        # A broker set up before live segments or triggers lacks their topics.
        # If the broker cannot be reached now, the produce retries until it can.
        try:
            ensure_topics(_stack.kafka_broker, settings)
        except (KafkaError, OSError) as exc:
            log.warning("could not make sure the topics exist: %s", exc)
    return FeatureEngine(
        settings,
        _stack.redis_url,
        metrics,
        layout=state_layout(settings, _stack.redis_url),
        events_topic=events_topic,
        live=LiveSegments(settings) if settings.live_segments else None,
        changes_topic=changes_topic,
        triggers=Triggers(settings) if settings.triggers else None,
        triggers_topic=triggers_topic,
    )


consumer = EventConsumer(
    settings,
    _stack.kafka_broker,
    None,
    dlq_topic,
    WORKER_ID,
    timeouts=group_timeouts(settings, bundled_broker(_stack)),
    build_engine=_build_engine,
)


def _ready() -> None:
    """Take what setup created out of the garbage collector's way (see infra.heap).

    Full collections then scan only live stream data: a profile showed them
    shrinking from ~45 ms to a few (see core.user_state).
    """
    settle_after_setup()
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
    """Update the offset gauges and rewrite the textfile; never raises."""
    try:
        metrics.set_lag(consumer.lag())
        metrics.set_positions(consumer.positions())
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
    if consumer.engine is not None:
        log.info("counters %s", dict(consumer.engine.counts))


@app.on_before_shutdown.connect
async def drop_metrics_file(sender: faust.App, **kwargs: object) -> None:
    """A stopped worker leaves no stale series behind."""
    remove_textfile(METRICS_FILE)


def main() -> None:
    """Entry point used by ``segscore worker``."""
    asyncio.set_event_loop(asyncio.new_event_loop())
    app.main()
