"""The stream worker's metrics, in Prometheus text format.

Faust's own web server is off (several workers share one machine), so the worker
exposes its metrics itself, in one or both of two ways:

- a textfile, ``$SEGSCORE_HOME/metrics/<worker-id>.prom``, rewritten atomically every
  ``worker_metrics_interval_seconds`` (the node-exporter textfile-collector style;
  also what the tests read);
- an HTTP endpoint on ``worker_metrics_port`` (``SEGSCORE_WORKER_METRICS_PORT``;
  0, the default, means off).

Every series carries a ``worker`` label so that the files of several workers can be
merged by one collector without clashing.

Lag (``segscore_worker_consumer_lag``) is derived from the broker's high watermark.
The bundled tansu broker reports high watermarks behind what it has acknowledged
(measured: 2,804 and 2,935 after acknowledging 3,120 and 3,280 records, and still
so seconds later), so against it the gauge undercounts and cannot tell "caught up".
Nothing in the worker or the benchmarks decides anything from it: progress checks
use what the worker applied (its counters, ``segscore_worker_next_offset``, the
states in Redis).
"""

from __future__ import annotations

import bisect
import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    generate_latest,
    start_http_server,
    write_to_textfile,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from infra.settings import Settings

# Freshness spans sub-second (live traffic) to hours (a replay or a backlog).
FRESHNESS_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400,
)  # fmt: skip
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def worker_id(settings: Settings) -> str:
    """This worker's id: the setting, else ``<hostname>-<pid>``."""
    return settings.worker_id or f"{socket.gethostname()}-{os.getpid()}"


def textfile_path(settings: Settings, worker: str) -> Path:
    """Where a worker writes its exposition file."""
    return settings.home / "metrics" / f"{worker}.prom"


# The values live in these small primitives rather than in prometheus_client's
# Counter/Gauge/Histogram: importing Feast sets PROMETHEUS_MULTIPROC_DIR, which
# switches those classes, process-wide, to values shared through mmap files (two
# WorkerMetrics in one process would then count into the same series). A custom
# collector is the documented way to expose values kept elsewhere.


class _Series:
    """Values of one metric by label values; safe to read from the HTTP thread."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def _key(self, labels: Mapping[str, object]) -> tuple[str, ...]:
        if set(labels) != set(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {labels}")
        return tuple(str(labels[name]) for name in self.labels)

    def items(self) -> list[tuple[tuple[str, ...], float]]:
        with self._lock:
            return list(self._values.items())


class _Counter(_Series):
    def inc(self, amount: float = 1.0, **labels: object) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for key, value in self.items():
            family.add_metric(list(key), value)
        return family


class _Gauge(_Series):
    def set(self, value: float, **labels: object) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def replace(self, values: Mapping[tuple[str, ...], float]) -> None:
        with self._lock:
            self._values = {k: float(v) for k, v in values.items()}

    def family(self) -> Metric:
        family = GaugeMetricFamily(self.name, self.doc, labels=self.labels)
        for key, value in self.items():
            family.add_metric(list(key), value)
        return family


class _Histogram:
    """An unlabelled histogram with fixed upper bounds (+Inf added)."""

    def __init__(self, name: str, doc: str, buckets: tuple[float, ...]) -> None:
        self.name, self.doc = name, doc
        self.bounds = tuple(sorted(buckets))
        self._counts = [0] * (len(self.bounds) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.bounds, value)
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def observe_ages(self, now: float, times: Iterable[float | None]) -> float | None:
        """Observe ``now - t`` (at least 0) for each known ``t``; the largest.

        Times that are ``None`` or not positive are unknown and skipped. One pass
        and one lock for a whole batch: per event, ``observe`` cost the worker
        about 2 % of its time in a profile.
        """
        bounds, bisect_left = self.bounds, bisect.bisect_left
        counts = [0] * len(self._counts)
        total, worst = 0.0, -1.0
        for ts in times:
            if ts is None or ts <= 0:
                continue
            age = now - ts
            if age < 0.0:
                age = 0.0
            counts[bisect_left(bounds, age)] += 1
            total += age
            if age > worst:
                worst = age
        if worst < 0.0:
            return None
        with self._lock:
            self._counts = [a + b for a, b in zip(self._counts, counts, strict=True)]
            self._sum += total
        return worst

    def family(self) -> Metric:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
            cumulative += count
            le = "+Inf" if bound == float("inf") else repr(float(bound))
            buckets.append((le, cumulative))
        family = HistogramMetricFamily(self.name, self.doc)
        family.add_metric([], buckets, total)
        return family


class WorkerMetrics(Collector):
    """Counters, gauges and histograms of one worker process."""

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self.messages = _Counter(
            "segscore_worker_messages",
            "Kafka messages handled and acknowledged (valid or not).",
        )
        self.events = _Counter(
            "segscore_worker_events",
            "Valid events written, by what the state transition did with them "
            "(applied, duplicate, late).",
            ("outcome",),
        )
        self.dlq = _Counter(
            "segscore_worker_dlq_records",
            "Records written to the dead-letter topic, by reason.",
            ("reason",),
        )
        self.batches = _Counter(
            "segscore_worker_batches", "Micro-batches written and acknowledged."
        )
        self.online_rows = _Counter(
            "segscore_worker_online_rows", "Feature rows pushed to the online store."
        )
        self.retries = _Counter(
            "segscore_worker_retries",
            "Failed attempts that are retried with backoff, by stage and error type.",
            ("stage", "error"),
        )
        self.activations = _Counter(
            "segscore_worker_activations",
            "Records produced for live segments and triggers, by kind "
            "(segment_change, trigger), and fires a cool-down held back "
            "(trigger_suppressed).",
            ("kind",),
        )
        self.fenced = _Counter(
            "segscore_worker_fenced_batches",
            "Batches refused by a partition's fence: the group gave this worker's "
            "partitions to another while it was frozen (not committed; it rejoins).",
        )
        self.batch_seconds = _Histogram(
            "segscore_worker_batch_duration_seconds",
            "Time from taking a micro-batch to having it written (retries included).",
            BATCH_BUCKETS,
        )
        self.event_freshness = _Histogram(
            "segscore_worker_event_to_online_seconds",
            "End-to-end freshness: event time (ts) to the online write of the "
            "features that include the event.",
            FRESHNESS_BUCKETS,
        )
        self.append_freshness = _Histogram(
            "segscore_worker_kafka_timestamp_to_online_seconds",
            "Kafka message timestamp (produce time, or broker append time on "
            "LogAppendTime topics) to the online write.",
            FRESHNESS_BUCKETS,
        )
        self.last_freshness = _Gauge(
            "segscore_worker_last_batch_max_freshness_seconds",
            "Largest freshness in the last written batch, by clock (event, kafka).",
            ("clock",),
        )
        self.last_write = _Gauge(
            "segscore_worker_last_online_write_timestamp_seconds",
            "Wall-clock time of the last online write.",
        )
        self.lag = _Gauge(
            "segscore_worker_consumer_lag",
            "Messages in an assigned partition not yet processed by this worker "
            "(high watermark minus the next offset to process). Only as good as "
            "the broker's high watermark: the bundled tansu reports it behind "
            "records it has acknowledged, so locally this undercounts (0 while "
            "records still wait); segscore_worker_messages counts what was done.",
            ("topic", "partition"),
        )
        self.position = _Gauge(
            "segscore_worker_next_offset",
            "Per assigned partition: the next offset this worker will process, i.e. "
            "every record before it is applied (or dead-lettered) and acknowledged. "
            "Independent of the broker's high watermark: compare it with the "
            "offsets producers were acknowledged for to tell 'caught up'.",
            ("topic", "partition"),
        )
        self.assigned = _Gauge(
            "segscore_worker_assigned_partitions",
            "Partitions of the events topic assigned to this worker.",
        )
        self.start_time = _Gauge(
            "segscore_worker_start_time_seconds", "When this worker process started."
        )
        self.updated = _Gauge(
            "segscore_worker_metrics_updated_timestamp_seconds",
            "When this exposition was last refreshed.",
        )
        self.start_time.set(time.time())
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        """Every family, with ``worker`` added to each sample's labels."""
        for series in (
            self.messages,
            self.events,
            self.dlq,
            self.batches,
            self.online_rows,
            self.retries,
            self.activations,
            self.fenced,
            self.batch_seconds,
            self.event_freshness,
            self.append_freshness,
            self.last_freshness,
            self.last_write,
            self.lag,
            self.position,
            self.assigned,
            self.start_time,
            self.updated,
        ):
            family = series.family()
            family.samples = [
                s._replace(labels={"worker": self.worker, **s.labels})
                for s in family.samples
            ]
            yield family

    # --- recording -----------------------------------------------------------

    def record_rejections(self, reasons: Iterable[str]) -> None:
        """Count DLQ records by reason (once they are written)."""
        for reason in reasons:
            self.dlq.inc(reason=reason)

    def record_outcomes(self, counts: Mapping[str, int]) -> None:
        """Count valid events by state-transition outcome."""
        for outcome, n in counts.items():
            if n:
                self.events.inc(n, outcome=outcome)

    def record_write(
        self,
        written_at: float,
        event_times: Iterable[float],
        kafka_times: Iterable[float | None],
        rows: int,
    ) -> None:
        """Freshness of the events whose features were just written."""
        self.online_rows.inc(rows)
        self.last_write.set(written_at)
        for clock, times, histogram in (
            ("event", event_times, self.event_freshness),
            ("kafka", kafka_times, self.append_freshness),
        ):
            worst = histogram.observe_ages(written_at, times)
            if worst is not None:
                self.last_freshness.set(worst, clock=clock)

    def record_retry(self, stage: str, error: BaseException) -> None:
        """One failed attempt that will be retried."""
        self.retries.inc(stage=stage, error=type(error).__name__)

    def set_lag(self, lags: Mapping[tuple[str, int], int]) -> None:
        """Replace the per-partition lag gauges with the current assignment's."""
        self.lag.replace({(t, str(p)): lag for (t, p), lag in lags.items()})
        self.assigned.set(len(lags))

    def set_positions(self, positions: Mapping[tuple[str, int], int]) -> None:
        """Replace the per-partition next-offset gauges (assigned partitions)."""
        self.position.replace({(t, str(p)): n for (t, p), n in positions.items()})

    # --- exposition ----------------------------------------------------------

    def exposition(self) -> bytes:
        """The current metrics in Prometheus text format."""
        self.updated.set(time.time())
        return generate_latest(self.registry)

    def write_textfile(self, path: Path) -> None:
        """Atomically (re)write the exposition file (node-exporter style)."""
        self.updated.set(time.time())
        path.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(path), self.registry)

    def serve_http(self, port: int, addr: str = "127.0.0.1") -> int:
        """Serve the metrics on ``addr:port`` (a daemon thread); returns the port."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return int(server.server_address[1])


def remove_textfile(path: Path) -> None:
    """Remove a worker's exposition file (on clean shutdown: no stale series)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_exposition(text: str) -> Samples:
    """Prometheus text to ``{(sample name, sorted labels without worker): value}``."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items()))
            labels = tuple(kv for kv in labels if kv[0] != "worker")
            samples[(sample.name, labels)] = sample.value
    return samples


def sample_sum(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(
        value
        for (sample_name, sample_labels), value in samples.items()
        if sample_name == name and wanted <= set(sample_labels)
    )


def label_values(samples: Samples, name: str, label: str) -> Iterator[str]:
    """Values of one label across the samples named ``name``."""
    for sample_name, labels in samples:
        if sample_name == name:
            for key, value in labels:
                if key == label:
                    yield value
